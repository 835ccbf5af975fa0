"""Settings behind worker labels: step_labels checked at start-up, `jobs` capping max-jobs."""

from types import SimpleNamespace

import pytest

from distbuild import config
from distbuild.controller.settings import ControllerSettings
from distbuild.errors import ConfigError
from distbuild.worker.chunk import chunk_env
from distbuild.worker.context import WorkerSettings

REQUIRED = {k: "x" for k in ("state_dir", "trove_git_url", "artifact_cache_url",
                             "token_secret_file", "host_key", "initiator_authorized_keys",
                             "worker_authorized_keys")}


def test_step_labels_must_map_patterns_to_lists_of_names():
    ok = config.section(ControllerSettings, {**REQUIRED, "step_labels": {"system:*": ["kvm"]}},
                        "f.yaml: controller")
    assert ok.step_labels == {"system:*": ["kvm"]}
    with pytest.raises(ConfigError, match=r"controller: step_labels.*'system:\*' must map to "
                                          r"a list of label names, not 'kvm'"):
        config.section(ControllerSettings, {**REQUIRED, "step_labels": {"system:*": "kvm"}},
                       "f.yaml: controller")
    with pytest.raises(ConfigError, match="label_wait_seconds"):
        config.section(ControllerSettings, {**REQUIRED, "label_wait_seconds": 0}, "f")


@pytest.mark.parametrize("max_jobs, jobs, expected", [
    (8, 2, "-j2"), (2, 8, "-j2"), (None, 3, "-j3"), (4, None, None)])
def test_worker_jobs_caps_max_jobs(tmp_path, max_jobs, jobs, expected):
    import os

    node = SimpleNamespace(max_jobs=max_jobs, prefix="/usr", name="c", arch="x86_64",
                           build_mode="staging")
    flags = chunk_env(node, WorkerSettings(work_dir=tmp_path, jobs=jobs))["MAKEFLAGS"]
    assert flags == (expected or f"-j{min(4, os.cpu_count() or 1)}")

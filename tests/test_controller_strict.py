"""The controller's `strict_definitions` setting: unknown fields fail its plans for everyone.

The controller plans from real git repositories (file:// URLs standing in for
the trove's git) and asks a real trove's artifact cache, as it does for a build.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from distbuild import config
from distbuild.controller import requests
from distbuild.controller.core import Controller
from distbuild.controller.settings import ControllerSettings
from distbuild.errors import DefinitionsError
from distbuild.protocol import messages as m
from tests.defs_tree import BASE_FILES, write_tree
from tests.trove_process import TroveProcess

TYPO = BASE_FILES["strata/base.morph"].replace(
    "  ref: master\n- name: b", "  ref: master\n  unpretrify-ref: master\n- name: b")


def _controller(tmp_path: Path, trove: Path, cache: TroveProcess, strict: bool) -> Controller:
    (tmp_path / "controller.yaml").write_text(
        f"controller:\n  state_dir: {tmp_path / 'state'}\n  trove_git_url: file://{trove}\n"
        f"  artifact_cache_url: {cache.cache_url}\n"
        f"  token_secret_file: {cache.secret_file}\n  host_key: k\n"
        "  initiator_authorized_keys: k\n  worker_authorized_keys: k\n"
        f"  strict_definitions: {'true' if strict else 'false'}\n")
    settings = config.component_settings(ControllerSettings, str(tmp_path / "controller.yaml"),
                                         "controller")
    return Controller(settings, reactor=None, log=lambda line: None)


@pytest.fixture
def cache(tmp_path):
    trove = TroveProcess(tmp_path / "cache").start()
    yield trove
    trove.stop()


@pytest.fixture
def request_for(tmp_path):
    trove = tmp_path / "trove"
    defs = write_tree(trove / "defs", {**BASE_FILES, "strata/base.morph": TYPO})
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@127.0.0.1", "commit", "-qm", "d"]):
        subprocess.run(["git", "-C", str(defs), *args], check=True)
    # The chunks' repositories, so refs resolve in the non-strict plan.
    for name in ("a", "b", "c"):
        repo = write_tree(trove / "delta" / name, {"README": name})
        for args in (["init", "-q", "-b", "master"], ["add", "-A"],
                     ["-c", "user.name=t", "-c", "user.email=t@127.0.0.1", "commit", "-qm", "s"],
                     ["tag", "v1.0"]):
            subprocess.run(["git", "-C", str(repo), *args], check=True)
    head = subprocess.run(["git", "-C", str(defs), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    return trove, m.BuildRequest(definitions_repo=f"file://{defs}", definitions_commit=head,
                                 system="systems/s.morph")


WARNING = ("strata/base.morph:8: chunks[0].unpretrify-ref: unknown field; "
           "did you mean 'unpetrify-ref'?")


def test_strict_controller_refuses_unknown_fields(tmp_path, request_for, cache):
    trove, request = request_for
    with pytest.raises(DefinitionsError) as info:
        requests.plan(_controller(tmp_path, trove, cache, strict=True), "r1", request)
    assert str(info.value) == WARNING


def test_lenient_controller_plans_and_keeps_the_warning(tmp_path, request_for, cache):
    trove, request = request_for
    plan = requests.plan(_controller(tmp_path, trove, cache, strict=False), "r1", request)
    assert plan.warnings == [WARNING]
    assert len(plan.graph.nodes) == 6

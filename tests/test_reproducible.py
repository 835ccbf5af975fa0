"""The same step built by two workers gives byte-identical chunk, stratum and system artifacts.

Each "worker" is `distbuild build-step` (a worker's step runner) in a work
directory of its own, with its own mirrors, checkouts and artifact cache; the
second runs later and with another umask, as a second machine would.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distbuild import examples
from tests.conftest import MORPHS, PROJECT

pytestmark = pytest.mark.slow

SYSTEM = "systems/example-system-x86_64.morph"


def build_everything(tmp_path: Path, worker: str, umask: int) -> dict[str, str]:
    """Build the whole example system in a fresh work dir; artifact file name -> sha256."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    env.pop("DISTBUILD_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "distbuild", "build-step", "--definitions", str(MORPHS),
         "--work-dir", str(tmp_path / worker), "--staging-over-host", "--with-deps",
         "--repo-alias", f"upstream={tmp_path}/repos/delta/%s#unused",
         SYSTEM, "example-system-x86_64"],
        env=env, capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    paths = [Path(line.split(": ", 1)[1]) for line in proc.stdout.splitlines()
             if line.startswith("Artifact: ")]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_two_workers_build_byte_identical_artifacts(tmp_path):
    examples.make_all(tmp_path / "repos" / "delta")
    first = build_everything(tmp_path, "worker-1", 0o022)
    time.sleep(1.1)  # file times on the second worker differ from the first's
    second = build_everything(tmp_path, "worker-2", 0o002)
    kinds = {name.split(".")[1] for name in first}
    assert kinds == {"chunk", "stratum", "system"}
    assert len(first) > 10
    different = sorted(name for name in first if first[name] != second.get(name))
    assert set(first) == set(second) and not different, different

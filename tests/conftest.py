"""Shared test fixtures: paths to the project and to ../shared, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
SHARED = PROJECT.parent / "shared"
BASEROCK = SHARED / "baserock-definitions"
MORPHS = PROJECT / "morphs"


def run_distbuild(*args: str, cwd: Path | None = None, env: dict | None = None,
                  timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m distbuild ARGS` as its own process, with this checkout first on the path."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(PROJECT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.pop("DISTBUILD_CONFIG", None)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "distbuild", *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"distbuild {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def baserock() -> Path:
    if not BASEROCK.is_dir():
        pytest.skip("../shared/baserock-definitions is not beside the project")
    return BASEROCK


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (skips the test where mounting needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)

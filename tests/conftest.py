"""Shared test fixtures: paths to the project and to ../shared, and a CLI runner."""

from __future__ import annotations

import os
import shutil
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


# CI sets this (.ci/run) so that tests needing ../shared fail instead of skipping.
REQUIRE_ALL = "DISTBUILD_REQUIRE_ALL"


def skip_or_fail(reason: str) -> None:
    """Skip the test for something from outside the clone that is missing, with one
    reason line; or fail when $DISTBUILD_REQUIRE_ALL is 1 (CI must run every test)."""
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ALL}=1 requires it)", pytrace=False)
    pytest.skip(reason)


def need_shared(path: Path = BASEROCK) -> Path:
    """`path` under ../shared, or skip_or_fail when it is absent."""
    if not path.exists():
        skip_or_fail(f"../shared/{path.relative_to(SHARED)} is not beside the project")
    return path


# Where .ci/fetch-test-sources puts the upstream release tarballs tests build.
SOURCES_ENV = "DISTBUILD_TEST_SOURCES"


def sources_dir() -> Path:
    """Where .ci/fetch-test-sources put the test tarballs."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get(SOURCES_ENV) or default / "distbuild" / "test-sources")


def find_source(pattern: str) -> Path | None:
    """The newest tarball matching `pattern` that .ci/fetch-test-sources fetched, if any."""
    found = sorted(sources_dir().glob(pattern))
    return found[-1] if found else None


def fetched_source(pattern: str) -> Path:
    """find_source(pattern), or skip_or_fail when there is none."""
    found = find_source(pattern)
    if found is None:
        skip_or_fail(f"no {pattern} in {sources_dir()} (run .ci/fetch-test-sources)")
    return found


# The KVM boot tests run last, and their kernel builds in the background from the
# moment they are collected (tests/kvm_prebuild.py).
KVM_TESTS = "tests/test_kvm_boot.py"


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.nodeid.startswith(KVM_TESTS))


def pytest_collection_finish(session):
    if any(item.nodeid.startswith(KVM_TESTS) for item in session.items):
        from tests import kvm_prebuild

        kvm_prebuild.start_if_possible()


def pytest_sessionfinish(session, exitstatus):
    from tests import kvm_prebuild

    kvm_prebuild.stop()


@pytest.fixture
def baserock() -> Path:
    return need_shared(BASEROCK)


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


# Imports the modules named in argv and prints the site-packages entries they came from.
_THIRD_PARTY = """
import importlib, sys, sysconfig
from pathlib import Path
for name in sys.argv[1:]:
    importlib.import_module(name)
sites = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
for mod in list(sys.modules.values()):
    path = getattr(mod, "__file__", None) or ""
    for site in sites:
        if path.startswith(site + "/"):
            print(Path(site) / Path(path).relative_to(site).parts[0])
"""


def python_for_others(dest: Path, *modules: str) -> tuple[str, str]:
    """(python, PYTHONPATH) with which another user runs `modules` of this checkout.

    The checkout (and its .venv) may lie under a directory only root can read,
    as `mktemp -d` makes, so the distbuild package, its extensions and the
    third-party packages `modules` import are copied into `dest` (which that
    user must be able to read), and the interpreter is the system's own.
    """
    lib = dest / "lib"
    shutil.copytree(PROJECT / "distbuild", lib / "distbuild",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT / "extensions", lib / "extensions")
    found = subprocess.run([sys.executable, "-c", _THIRD_PARTY, *modules], check=True,
                           capture_output=True, text=True, cwd=PROJECT).stdout.split()
    for entry in sorted({Path(p) for p in found}):
        if entry.name.startswith(("__editable__", "_distutils_hack", "distbuild")):
            continue
        if entry.is_dir():
            shutil.copytree(entry, lib / entry.name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(entry, lib / entry.name)
    subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)
    return os.path.realpath(sys.executable), str(lib)

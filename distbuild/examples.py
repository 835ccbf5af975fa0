"""The example sources under morphs/sources, turned into git repositories.

The demo and the tests import each `morphs/sources/NAME` into a trove as
`delta/NAME` (what `upstream:NAME` in morphs/ names). Each becomes a
repository with one commit on `master` whose author, committer and dates are
fixed, so its commit SHA is the same on every machine and every run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from distbuild.errors import DistbuildError

MORPHS = Path(__file__).resolve().parent.parent / "morphs"
SOURCES = MORPHS / "sources"

_FIXED_IDENTITY = {
    "GIT_AUTHOR_NAME": "distbuild examples",
    "GIT_AUTHOR_EMAIL": "examples@distbuild.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "distbuild examples",
    "GIT_COMMITTER_EMAIL": "examples@distbuild.invalid",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+0000",
    # The user's own git configuration (signing, hooks, default branch)
    # must not change the commit.
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def source_names() -> list[str]:
    """The names of the example sources, one per chunk in morphs/."""
    return sorted(p.name for p in SOURCES.iterdir() if p.is_dir())


def make_git_repo(source: Path, dest: Path, *, bare: bool = False) -> str:
    """Make `dest` a git repository holding `source`'s files as one commit on master.

    Returns the commit SHA, which depends only on the files and their modes.
    """
    if not source.is_dir():
        raise DistbuildError("example source directory does not exist", str(source))
    if dest.exists():
        raise DistbuildError("destination already exists", str(dest))
    env = {**os.environ, **_FIXED_IDENTITY}
    work = dest if not bare else dest.with_name(dest.name + ".work")
    _git(["init", "-q", "-b", "master", str(work)], env)
    _git(["--work-tree", str(source), "-C", str(work), "add", "-A", "."], env)
    _git(["-C", str(work), "commit", "-q", "-m", f"Import {source.name}"], env)
    if bare:
        _git(["clone", "-q", "--bare", str(work), str(dest)], env)
        shutil.rmtree(work)
    return _git(["-C", str(dest), "rev-parse", "HEAD"], env).strip()


def make_all(dest_dir: Path, *, bare: bool = False) -> dict[str, str]:
    """Make a repository for every example source under `dest_dir`; name -> commit SHA."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".git" if bare else ""
    return {name: make_git_repo(SOURCES / name, dest_dir / f"{name}{suffix}", bare=bare)
            for name in source_names()}


def _git(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(["git", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DistbuildError(f"git {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


"""A worker's checkout gives every file the commit's time, as a release tarball would."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from distbuild.worker.sources import GitSources

WHEN = 1_262_304_000  # 2010-01-01, the commit's committer time


def test_every_checked_out_file_has_the_commit_time(tmp_path):
    repo = tmp_path / "repo"
    (repo / "m4").mkdir(parents=True)
    # Written so that the inputs are newer than what was generated from them.
    for name in ("aclocal.m4", "configure", "Makefile.in", "configure.ac", "Makefile.am",
                 "m4/x.m4"):
        (repo / name).write_text(name + "\n")
    os.symlink("configure", repo / "link")
    env = {**os.environ, "GIT_COMMITTER_DATE": f"@{WHEN} +0000",
           "GIT_AUTHOR_DATE": "@1 +0000"}
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@127.0.0.1", "commit", "-qm", "r"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    dest = tmp_path / "build"
    GitSources(tmp_path / "mirrors").checkout(str(repo), commit, dest)
    times = {str(p.relative_to(dest)): p.lstat().st_mtime for p in [dest, *dest.rglob("*")]
             if ".git" not in p.relative_to(dest).parts}
    assert set(times) >= {".", "aclocal.m4", "configure.ac", "m4", "m4/x.m4", "link"}
    assert set(times.values()) == {WHEN}, times
    assert Path(dest / ".git").is_dir()

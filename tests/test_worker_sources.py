"""A worker's checkout: every file with the commit's time, as a release tarball would have;
later checkouts of a small tree copied from the first, with no git process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from distbuild.worker import sources as sources_module
from distbuild.worker.sources import GitSources

WHEN = 1_262_304_000  # 2010-01-01, the commit's committer time


def _repo(tmp_path: Path) -> tuple[Path, str]:
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
    return repo, commit


def _tree(dest: Path) -> dict[str, tuple]:
    """Every entry but .git: (type and mode, mtime, content or symlink target)."""
    out = {}
    for p in [dest, *dest.rglob("*")]:
        rel = p.relative_to(dest)
        if ".git" in rel.parts:
            continue
        st = p.lstat()
        body = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
        out[str(rel)] = (st.st_mode, st.st_mtime_ns, body)
    return out


def test_every_checked_out_file_has_the_commit_time(tmp_path):
    repo, commit = _repo(tmp_path)
    dest = tmp_path / "build"
    GitSources(tmp_path / "mirrors").checkout(str(repo), commit, dest)
    times = {str(p.relative_to(dest)): p.lstat().st_mtime for p in [dest, *dest.rglob("*")]
             if ".git" not in p.relative_to(dest).parts}
    assert set(times) >= {".", "aclocal.m4", "configure.ac", "m4", "m4/x.m4", "link"}
    assert set(times.values()) == {WHEN}, times
    assert Path(dest / ".git").is_dir()


def test_a_second_checkout_is_the_first_copied_and_runs_no_git(tmp_path, monkeypatch):
    repo, commit = _repo(tmp_path)
    sources = GitSources(tmp_path / "mirrors")
    sources.checkout(str(repo), commit, tmp_path / "first")
    (tmp_path / "first" / "configure").write_text("changed by a build\n")
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    sources.checkout(str(repo), commit, tmp_path / "second")
    monkeypatch.undo()
    first, second = _tree(tmp_path / "first"), _tree(tmp_path / "second")
    assert second["configure"][2] == b"configure\n"  # the kept copy, not the build's
    del first["configure"], second["configure"], first["."], second["."]
    assert second == first
    assert (tmp_path / "second").stat().st_mtime == WHEN
    # git works in it, at the commit, and sees nothing changed.
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path / "second"), *args], check=True,
                              capture_output=True, text=True).stdout.strip()
    assert git("rev-parse", "HEAD") == commit
    assert git("status", "--porcelain") == ""
    assert git("log", "--format=%s") == "r"


def test_a_large_tree_is_checked_out_by_git_every_time(tmp_path, monkeypatch):
    monkeypatch.setattr(sources_module, "KEEP_FILES", 3)
    repo, commit = _repo(tmp_path)
    sources = GitSources(tmp_path / "mirrors")
    sources.checkout(str(repo), commit, tmp_path / "first")
    assert not (sources.kept_dir / commit).exists()
    sources.checkout(str(repo), commit, tmp_path / "second")
    assert _tree(tmp_path / "second") == _tree(tmp_path / "first")

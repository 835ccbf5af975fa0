"""A local mirror cache of source repositories, for workers and the ref resolver.

Each repository URL gets one bare mirror under the cache directory. A commit
already in the mirror is used without touching the network, so a second build
of the same commit fetches nothing; a missing commit or a branch name fetches
branches and tags (git only transfers what the mirror lacks). A lock file per
mirror keeps concurrent steps on one machine from fetching into it at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distbuild.errors import MissingRepository, ResolveError
from distbuild.files import locked

SHA_RE = re.compile(r"[0-9a-f]{40}")
# What git says when the server answers but has no such repository (git daemon with
# --informative-errors, a path, smart HTTP), rather than when it cannot be reached.
_MISSING = re.compile(r"no such repository|does not appear to be a git repository|"
                      r"repository '[^']*' not found")
FETCH_REFSPECS = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]


def _git(*args: str, cwd: Path | None = None, check: bool = True,
         timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    # A mirror must never stop to ask for a password on a terminal.
    env["GIT_TERMINAL_PROMPT"] = "0"
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout,
                                            proc.stderr)
    return proc


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("fatal: ") if lines else "no output"


class MirrorCache:
    """Bare mirrors of repositories under `root`, filled on demand."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fetches = 0

    def path_for(self, url: str) -> Path:
        """The mirror directory of `url`: readable, yet unique per URL."""
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[-1]).strip("_.")[-60:]
        digest = hashlib.sha256(url.encode()).hexdigest()[:12]
        return self.root / f"{readable}-{digest}.git"

    @contextmanager
    def _locked(self, url: str) -> Iterator[Path]:
        path = self.path_for(url)
        with locked(Path(str(path) + ".lock")):
            yield path

    def has_commit(self, url: str, commit: str) -> bool:
        """Whether the mirror of `url` already holds `commit` (no network)."""
        path = self.path_for(url)
        return path.is_dir() and _git("cat-file", "-e", f"{commit}^{{commit}}", cwd=path,
                                      check=False).returncode == 0

    def update(self, url: str) -> Path:
        """Fetch every branch and tag of `url` into its mirror (creating it); its path."""
        with self._locked(url) as path:
            self._fetch(url, path, FETCH_REFSPECS)
            return path

    def ensure(self, url: str, ref: str) -> Path:
        """The mirror of `url`, holding `ref`; fetches only when `ref` is not already there.

        A full commit SHA already present is used as is; a branch or tag name is
        always brought up to date, since where it points may have moved.
        """
        with self._locked(url) as path:
            if not SHA_RE.fullmatch(ref):
                self._fetch(url, path, FETCH_REFSPECS)
            elif not self.has_commit(url, ref):
                # Branches, tags and the commit itself in one fetch, for a commit on no
                # branch or tag (an initiator's snapshot of its definitions): a round
                # trip less on a build's way to its first step. A server that will not
                # hand out a commit by name fails the whole fetch; then the usual one.
                try:
                    self._fetch(url, path, [*FETCH_REFSPECS, ref])
                except MissingRepository:
                    raise
                except ResolveError:
                    self._fetch(url, path, FETCH_REFSPECS)
            return path

    def _fetch(self, url: str, path: Path, refspecs: list[str], missing_ok: bool = False):
        if not path.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.root))
            _git("init", "-q", "--bare", str(tmp))
            try:
                self._run_fetch(url, tmp, refspecs)
            except ResolveError:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            os.rename(tmp, path)
            return
        try:
            self._run_fetch(url, path, refspecs)
        except ResolveError:
            if not missing_ok:
                raise

    def _run_fetch(self, url: str, path: Path, refspecs: list[str]) -> None:
        self.fetches += 1
        proc = _git("fetch", "-q", "--prune", "--no-tags", url, *refspecs, cwd=path,
                    check=False)
        if proc.returncode != 0:
            if _MISSING.search(proc.stderr):
                raise MissingRepository("no such repository", url)
            raise ResolveError(f"cannot fetch repository: {_last_line(proc.stderr)}", url,
                               retryable=True)

    def checkout(self, url: str, commit: str, dest: Path) -> Path:
        """A working tree of `commit` of `url` at `dest` (a new directory), from the mirror."""
        mirror = self.ensure(url, commit)
        if not self.has_commit(url, commit):
            raise ResolveError(f"commit {commit} not found in repository", url)
        dest = Path(dest)
        # A local clone hard-links the mirror's objects: quick, and independent of
        # the mirror afterwards (unlike --shared), so it works inside a sandbox.
        proc = _git("clone", "-q", "--no-checkout", str(mirror), str(dest), check=False)
        if proc.returncode == 0:
            proc = _git("checkout", "-q", "--detach", commit, cwd=dest, check=False)
        if proc.returncode != 0:
            shutil.rmtree(dest, ignore_errors=True)
            raise ResolveError(f"cannot check out {commit}: {_last_line(proc.stderr)}", url)
        return dest

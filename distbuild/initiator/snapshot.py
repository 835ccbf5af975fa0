"""The exact state of a definitions checkout as a commit, and getting it onto the trove.

As morph did, the initiator builds HEAD plus every uncommitted change
(untracked files too, unless ignored). It writes that state into a commit
using a temporary index, so the user's index, branches and working tree are
untouched, and pushes it to a ref under refs/distbuild/snapshots/ on the
trove. The snapshot commit takes HEAD's dates, so the same state always
makes the same commit and a repeated build pushes nothing new.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from distbuild import ssh
from distbuild.errors import ConfigError, DistbuildError

SNAPSHOT_REFS = "refs/distbuild/snapshots"
PUSH_ATTEMPTS = 3


class SnapshotError(DistbuildError):
    """The checkout's state could not be captured or pushed."""


@dataclass(frozen=True)
class Snapshot:
    top: Path  # the checkout's top directory
    commit: str
    head: str

    @property
    def has_changes(self) -> bool:
        return self.commit != self.head


def _git(args: list[str], cwd: Path, env: dict | None = None, what: str = "") -> str:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    full["GIT_TERMINAL_PROMPT"] = "0"
    full.update(env or {})
    proc = subprocess.run(["git", *args], cwd=cwd, env=full, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        reason = lines[-1].removeprefix("fatal: ") if lines else f"exit {proc.returncode}"
        raise SnapshotError(f"{what or 'git ' + args[0]} failed: {reason}", str(cwd))
    return proc.stdout.strip()


def take(path: Path) -> Snapshot:
    """Commit the checkout's current state (HEAD and uncommitted changes) without touching it."""
    try:
        top = Path(_git(["rev-parse", "--show-toplevel"], path))
    except SnapshotError:
        raise SnapshotError("not a git checkout; run distbuild in a checkout of your "
                            "definitions", str(path)) from None
    head = _git(["rev-parse", "--verify", "-q", "HEAD^{commit}"], top,
                what="finding HEAD (does the repository have a commit yet?)")
    with tempfile.TemporaryDirectory(prefix="distbuild-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(["read-tree", "HEAD"], top, env)
        _git(["add", "-A", "."], top, env, what="recording uncommitted changes")
        tree = _git(["write-tree"], top, env)
    if tree == _git(["rev-parse", "HEAD^{tree}"], top):
        return Snapshot(top, head, head)
    dates = _git(["log", "-1", "--format=%aD%n%cD", "HEAD"], top).splitlines()
    env = {"GIT_AUTHOR_NAME": "distbuild", "GIT_AUTHOR_EMAIL": "distbuild@localhost",
           "GIT_COMMITTER_NAME": "distbuild", "GIT_COMMITTER_EMAIL": "distbuild@localhost",
           "GIT_AUTHOR_DATE": dates[0], "GIT_COMMITTER_DATE": dates[1]}
    commit = _git(["commit-tree", tree, "-p", head, "-m",
                   f"distbuild: uncommitted changes on top of {head[:12]}"], top, env)
    return Snapshot(top, commit, head)


def push(snapshot: Snapshot, repo: str, trove_ssh_url: str, identity: Path,
         known_hosts: Path) -> str:
    """Push the snapshot to repository `repo` on the trove; returns the ref it is under."""
    parsed = urllib.parse.urlsplit(trove_ssh_url)
    if parsed.scheme != "ssh" or not parsed.hostname:
        raise ConfigError("trove_ssh_url must look like ssh://git@HOST:PORT", trove_ssh_url)
    host, port = parsed.hostname, parsed.port or 22
    ssh.check_host_key(known_hosts, host, port, ssh.fetch_host_key(host, port))
    ref = f"{SNAPSHOT_REFS}/{snapshot.commit}"
    target = f"ssh://{parsed.username or 'git'}@{host}:{port}/{repo}"
    env = {"GIT_SSH_COMMAND": ssh.git_ssh_command(identity, known_hosts)}
    for attempt in range(PUSH_ATTEMPTS):
        try:
            _git(["push", "-q", target, f"{snapshot.commit}:{ref}"], snapshot.top, env,
                 what=f"pushing the definitions to {target}")
            return ref
        except SnapshotError:
            # Two initiators pushing the same state at once race for the ref's lock;
            # the loser finds the ref already there on its next try.
            if attempt == PUSH_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    return ref

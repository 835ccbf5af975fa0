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
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from distbuild.errors import ConfigError, DistbuildError

SNAPSHOT_REFS = "refs/distbuild/snapshots"
PUSH_ATTEMPTS = 3


class SnapshotError(DistbuildError):
    """The checkout's state could not be captured or pushed."""

    host_key = False  # ssh refused the trove's host key


@dataclass(frozen=True)
class Snapshot:
    top: Path  # the checkout's top directory
    commit: str
    head: str

    @property
    def has_changes(self) -> bool:
        return self.commit != self.head


class _GitFailed(SnapshotError):
    def __init__(self, what: str, where: str, stderr: str):
        super().__init__(what, where)
        self.stderr = stderr


def _git_env(env: dict | None = None) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    full["GIT_TERMINAL_PROMPT"] = "0"
    full.update(env or {})
    return full


def _git(args: list[str], cwd: Path, env: dict | None = None, what: str = "") -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=_git_env(env), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        reason = lines[-1].removeprefix("fatal: ") if lines else f"exit {proc.returncode}"
        raise _GitFailed(f"{what or 'git ' + args[0]} failed: {reason}", str(cwd), proc.stderr)
    return proc.stdout.strip()


# The build's own output, never part of what is built.
LOG_FILES = "build-step-*.log"


def take(path: Path, leave_out: list[Path] | None = None) -> Snapshot:
    """Commit the checkout's current state (HEAD and uncommitted changes) without touching it.

    Uncommitted build-step-*.log files are left out, and so is each directory in
    `leave_out` (such as --initiator-step-output-dir) that lies inside the checkout.
    """
    try:
        # One git for all four in the usual case; apart, to say which one failed.
        top_text, head, head_tree, index_text = _git(
            ["rev-parse", "--show-toplevel", "HEAD^{commit}", "HEAD^{tree}", "--git-path",
             "index"], path).splitlines()
        top = Path(top_text)
        index: Path | None = Path(path) / index_text  # (as is, when absolute)
    except (SnapshotError, ValueError):
        top, head, head_tree = _top_and_head(path)
        index = None
    excludes = [f":(exclude,glob)**/{LOG_FILES}"]
    for folder in leave_out or []:
        inside = _inside(folder, top)
        if inside:
            excludes.append(f":(exclude,top){inside}")
    with tempfile.TemporaryDirectory(prefix="distbuild-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        try:
            # The checkout's own index, copied: `add` then hashes only the files whose
            # stat changed, and no `read-tree` runs (a git process less).
            shutil.copyfile(index, env["GIT_INDEX_FILE"])
        except (OSError, TypeError):  # no index yet (or not found): start from HEAD
            _git(["read-tree", "HEAD"], top, env)
        _git(["add", "-A", "--", ".", *excludes], top, env,
             what="recording uncommitted changes")
        tree = _git(["write-tree"], top, env)
    if tree == head_tree:
        return Snapshot(top, head, head)
    dates = _git(["log", "-1", "--format=%aD%n%cD", "HEAD"], top).splitlines()
    env = {"GIT_AUTHOR_NAME": "distbuild", "GIT_AUTHOR_EMAIL": "distbuild@localhost",
           "GIT_COMMITTER_NAME": "distbuild", "GIT_COMMITTER_EMAIL": "distbuild@localhost",
           "GIT_AUTHOR_DATE": dates[0], "GIT_COMMITTER_DATE": dates[1]}
    commit = _git(["commit-tree", tree, "-p", head, "-m",
                   f"distbuild: uncommitted changes on top of {head[:12]}"], top, env)
    return Snapshot(top, commit, head)


def _top_and_head(path: Path) -> tuple[Path, str, str]:
    """The checkout's top, HEAD's commit and its tree, each asked alone for its error."""
    try:
        top = Path(_git(["rev-parse", "--show-toplevel"], path))
    except SnapshotError:
        raise SnapshotError("not a git checkout; run distbuild in a checkout of your "
                            "definitions", str(path)) from None
    head = _git(["rev-parse", "--verify", "-q", "HEAD^{commit}"], top,
                what="finding HEAD (does the repository have a commit yet?)")
    return top, head, _git(["rev-parse", "HEAD^{tree}"], top)


def _inside(folder: Path, top: Path) -> str | None:
    """`folder` relative to `top` when it lies strictly inside it."""
    try:
        rel = Path(os.path.abspath(folder)).resolve().relative_to(top.resolve())
    except ValueError:
        return None
    return str(rel) if str(rel) != "." else None


def require_file(snapshot: Snapshot, path: str) -> None:
    """Refuse, before anything is pushed, a system file that is not in the snapshot."""
    try:
        kind = _git(["cat-file", "-t", f"{snapshot.commit}:{path}"], snapshot.top)
    except SnapshotError:
        kind = ""
    if kind != "blob":
        raise SnapshotError("no such file in this checkout", path)


def push(snapshot: Snapshot, repo: str, trove_ssh_url: str, identity: Path,
         known_hosts: Path, announced_key: str = "", trove_git_url: str = "",
         probe: TroveProbe | None = None, cache_url: str = "") -> str:
    """Push the snapshot to repository `repo` on the trove; returns the ref it is under.

    `announced_key` is the trove's host key as the controller announced it: it is
    trusted when known_hosts names no key for the trove (and checked otherwise).
    With `trove_git_url`, a snapshot the trove already holds is not pushed again
    (`probe` is that question asked earlier, if it was asked of the same URL).
    """
    ref = f"{SNAPSHOT_REFS}/{snapshot.commit}"
    if trove_git_url:
        url = probe_url(trove_git_url, repo)
        if probe is None or probe.url != url:
            probe = TroveProbe(snapshot, url, cache_url)
        if probe.held():
            return ref
    # Imported only now: a snapshot the trove holds needs no SSH here.
    from distbuild import ssh

    parsed = urllib.parse.urlsplit(trove_ssh_url)
    if parsed.scheme != "ssh" or not parsed.hostname:
        raise ConfigError("trove_ssh_url must look like ssh://git@HOST:PORT", trove_ssh_url)
    host, port = parsed.hostname, parsed.port or 22
    with tempfile.TemporaryDirectory(prefix="distbuild-push-") as tmp:
        if announced_key and not ssh.known_keys(known_hosts, host, port):
            trusted = ssh.parse_public_key(announced_key, "the controller's welcome")
            known_hosts = Path(tmp) / "known_hosts"
            known_hosts.write_text(ssh.known_hosts_line(host, port, trusted) + "\n")
        try:
            # OpenSSH checks the trove's key against known_hosts itself (strictly).
            return _push(snapshot, f"ssh://{parsed.username or 'git'}@{host}:{port}/{repo}",
                         identity, known_hosts)
        except SnapshotError as e:
            if not e.host_key:
                raise
            # Only now the trove's key is fetched: to say which key it offers and
            # which line of known_hosts would trust it (a handshake less otherwise).
            ssh.check_host_key(known_hosts, host, port, ssh.fetch_host_key(host, port))
            raise


def trove_key_known(trove_ssh_url: str, known_hosts: Path | None) -> bool:
    """Whether `known_hosts` names a key for the trove at `trove_ssh_url` (no network)."""
    from distbuild import ssh

    parsed = urllib.parse.urlsplit(trove_ssh_url)
    if parsed.scheme != "ssh" or not parsed.hostname or known_hosts is None:
        return False
    return bool(ssh.known_keys(known_hosts, parsed.hostname, parsed.port or 22))


def probe_url(trove_git_url: str, repo: str) -> str:
    """The git URL of definitions repository `repo` on the trove's read-only port."""
    return f"{trove_git_url.rstrip('/')}/{repo}"


class TroveProbe:
    """Whether the trove's read-only git port already has the snapshot's ref at its commit.

    A repeated build of the same state then costs one git-protocol round trip
    instead of two SSH handshakes (the host-key probe and git's own) and a push.
    The `git ls-remote` starts at once, so it can run while the initiator connects
    to the controller; any failure just means "push as usual". With `cache_url`,
    the trove's HTTP port on the same host is asked instead (`GET /1.0/sha1s` for
    the ref): a few ms where a git process and the trove's upload-pack took
    50-100 ms, which a changed checkout waits for before its push.
    """

    def __init__(self, snapshot: Snapshot, url: str, cache_url: str = ""):
        self.url = url
        self.commit = snapshot.commit
        self.ref = f"{SNAPSHOT_REFS}/{snapshot.commit}"
        self._answer: bool | None = None
        self._proc: subprocess.Popen | None = None
        self._cache_url = cache_url if _same_host(url, cache_url) else ""
        if self._cache_url:
            return
        try:
            self._proc: subprocess.Popen | None = subprocess.Popen(
                ["git", "ls-remote", url, self.ref], cwd=snapshot.top, env=_git_env(),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True)
        except OSError:
            self._proc = None

    def held(self) -> bool:
        """Wait for the answer: True if the trove holds the ref at the snapshot's commit."""
        if self._answer is None:
            self._answer = self._ask()
        return self._answer

    def _ask(self) -> bool:
        if self._cache_url:
            from distbuild.errors import DistbuildError
            from distbuild.trove.client import CacheClient

            repo = urllib.parse.urlsplit(self.url).path.lstrip("/")
            try:
                answer = CacheClient(self._cache_url, timeout=10).sha1s(repo, self.ref)
            except DistbuildError:
                return False
            return answer is not None and answer.get("sha1") == self.commit
        if self._proc is None:
            return False
        out, _ = self._proc.communicate()
        return self._proc.returncode == 0 and any(
            line.split("\t") == [self.commit, self.ref] for line in out.splitlines())

    def close(self) -> None:
        """Stop the probe if nobody asked for its answer."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def _same_host(git_url: str, http_url: str) -> bool:
    """Whether an artifact cache URL names the host of a trove git URL (one trove)."""
    if not http_url:
        return False
    git, http = urllib.parse.urlsplit(git_url), urllib.parse.urlsplit(http_url)
    return http.scheme == "http" and bool(git.hostname) and git.hostname == http.hostname


def _push(snapshot: Snapshot, target: str, identity: Path, known_hosts: Path) -> str:
    from distbuild import ssh

    ref = f"{SNAPSHOT_REFS}/{snapshot.commit}"
    env = {"GIT_SSH_COMMAND": ssh.git_ssh_command(identity, known_hosts)}
    for attempt in range(1, PUSH_ATTEMPTS + 1):
        try:
            _git(["push", "-q", target, f"{snapshot.commit}:{ref}"], snapshot.top, env)
            return ref
        except _GitFailed as e:
            error = push_error(e.stderr, identity, target)
            # Two initiators pushing the same state at once race for the ref's lock;
            # the loser finds the ref already there on its next try. A trove that
            # dropped the connection may be back (`distbuild up` restarts it).
            if not error.retryable or attempt == PUSH_ATTEMPTS:
                raise error from None
            time.sleep(0.3 * attempt)
    return ref


HOST_KEY_REFUSED = "ssh refused the trove's host key (see known_hosts)"

# What git and ssh print, and what it means for a push to the trove. The first match wins.
_PUSH_FAILURES: tuple[tuple[tuple[str, ...], str, bool], ...] = (
    (("Host key verification failed",), HOST_KEY_REFUSED, False),
    (("Permission denied (publickey",),
     "the trove refused key {identity} (it is not among the initiator keys)", False),
    (("Connection refused",), "cannot connect to the trove: connection refused", True),
    (("hung up unexpectedly", "Connection closed by", "Connection reset",
      "unexpected disconnect", "Broken pipe", "early EOF", "closed by remote host"),
     "the trove closed the connection while receiving the definitions", True),
    (("cannot lock ref", "failed to update ref", "failed to lock"),
     "another push of the same state was under way", True),
)

# git's generic advice after any failure; it says nothing about this one.
_GIT_ADVICE = ("Could not read from remote repository", "Please make sure you have",
               "and the repository exists")


def push_error(stderr: str, identity: Path, target: str) -> SnapshotError:
    """The one-line error for a failed push, from what git and ssh printed."""
    for needles, message, retryable in _PUSH_FAILURES:
        if any(n in stderr for n in needles):
            error = SnapshotError(message.format(identity=identity), target)
            error.retryable = retryable
            error.host_key = message == HOST_KEY_REFUSED
            return error
    lines = [x.strip().removeprefix("fatal: ").removeprefix("error: ")
             for x in stderr.splitlines()
             if x.strip() and not any(a in x for a in _GIT_ADVICE)]
    return SnapshotError("pushing the definitions failed: "
                         + ("; ".join(lines) or "git gave no reason"), target)

"""Source checkouts for chunk steps, through a worker-local mirror of each repository.

Each repository URL gets one bare mirror under the mirror directory; a
checkout fetches into it only when the wanted commit is missing, so a
second build of the same commit touches no network. The build directory
is a clone of the mirror (object files hard-linked, no alternates), so git
works inside the sandbox, which cannot see the mirror. The clone is made
in process (distbuild.worker.gitclone) rather than by `git clone`, which
cost 15 ms of CPU per step in processes of its own: the repository
skeleton, the mirror's object files hard-linked, its branches as
`origin/*` and its tags in `packed-refs`, and then one `git checkout`
(`git clone` remains for a mirror on another filesystem).

Every checked-out file gets the same time, the commit's committer time, as a
release tarball's files have times from the release: git would give each the
moment it was written, in index order, so `aclocal.m4` would be older than
`configure.ac` and make would try to rerun autotools that a project imported
from its tarball does not need. The same time also makes a build's inputs
the same on every worker.

The trove's MirrorCache does the same for ref resolution; a step needs more
of it: every git process here runs through runprocess, so cancelling a step
kills a long fetch at once, and git's output goes to the step's log.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from distbuild import runprocess
from distbuild.files import locked
from distbuild.runprocess import CancelToken, LineCallback
from distbuild.worker.errors import SourceError
from distbuild.worker.gitclone import ClonePlan, clone_plan, link_clone

# A checkout of at most this many entries is kept once made, and later steps
# copy it in process instead of running `git checkout` (4-5 ms of CPU in git,
# 10-15 ms of a step's time on a busy machine); at most KEEP_TREES of them.
KEEP_FILES = 2000
KEEP_TREES = 64

_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C"}


class GitSources:
    """Checks out (repository URL, commit) into a directory, fetching into a mirror first."""

    def __init__(self, mirror_dir: Path,
                 resolve_url: Callable[[str], str] | None = None) -> None:
        self.mirror_dir = mirror_dir
        self.resolve_url = resolve_url or (lambda url: url)
        mirror_dir.mkdir(parents=True, exist_ok=True)
        # (mirror, commit) seen in a mirror: nothing deletes objects from one.
        self._present: set[tuple[Path, str]] = set()
        # What `link_clone` makes of each mirror, with the mirror's generation when read:
        # each time a step may have fetched into a mirror its generation moves on.
        self._plans: dict[Path, tuple[int, ClonePlan]] = {}
        self._generation: dict[Path, int] = {}
        self._changing: dict[Path, int] = {}  # steps that may be fetching into each now
        self._lock = threading.Lock()
        self._times: dict[str, int] = {}
        self.kept_dir = mirror_dir / "kept"

    def checkout(self, repo: str, commit: str, dest: Path, *,
                 submodules: Mapping[str, Mapping[str, str]] | None = None,
                 on_line: LineCallback | None = None,
                 cancel: CancelToken | None = None) -> None:
        """Make `dest` (which must not exist) a checkout of `commit` from `repo`."""
        url = self.resolve_url(repo)
        mirror = self._mirror(url, commit, on_line, cancel)
        if not self._copy_kept(mirror, commit, dest):
            self._git_checkout(mirror, url, commit, dest, on_line, cancel)
        for path, info in (submodules or {}).items():
            sub_commit = self._gitlink(dest, commit, path, url)
            sub_dest = dest / path
            if sub_dest.is_dir() and not any(sub_dest.iterdir()):
                sub_dest.rmdir()
            self.checkout(info["url"], sub_commit, sub_dest, on_line=on_line, cancel=cancel)

    def _git_checkout(self, mirror: Path, url: str, commit: str, dest: Path,
                      on_line: LineCallback | None, cancel: CancelToken | None) -> None:
        try:
            link_clone(mirror, dest, plan=self._plan(mirror))
        except OSError:
            self._plans.pop(mirror, None)
            shutil.rmtree(dest, ignore_errors=True)
            # No template: hook samples are a dozen files to write and delete per step.
            self._git(["clone", "-q", "--no-checkout", "--template=", str(mirror), str(dest)],
                      on_line, cancel, f"cannot clone mirror of {url}")
        self._git(["-C", str(dest), "checkout", "-q", "--detach", commit], on_line, cancel,
                  f"cannot check out {commit} of {url}")
        if commit not in self._times:
            self._times[commit] = self._commit_time(dest, commit)
        set_times(dest, self._times[commit])
        self._keep(dest, commit)

    # -- small trees kept once checked out ----------------------------------------------

    def _keep(self, dest: Path, commit: str) -> None:
        """Keep a copy of a small fresh checkout's files and index, for `_copy_kept`."""
        kept = self.kept_dir / commit
        if kept.is_dir() or not _small_tree(dest, KEEP_FILES):
            return
        tmp = self.kept_dir / f".{commit}.{os.getpid()}.{threading.get_ident()}"
        try:
            self.kept_dir.mkdir(exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            _copy_tree(dest, tmp)
            (tmp / ".git").mkdir()
            shutil.copy2(dest / ".git" / "index", tmp / ".git" / "index")
            os.utime(tmp, ns=(dest.stat().st_atime_ns, dest.stat().st_mtime_ns))
            os.rename(tmp, kept)
        except OSError:
            return  # another step kept it first, or no room: checkouts go on with git
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._trim_kept()

    def _copy_kept(self, mirror: Path, commit: str, dest: Path) -> bool:
        """Make `dest` from the kept copy of `commit`, without running git; False: none kept.

        What `git checkout` made: the same files with the same modes and times,
        and its index (whose file stats differ from the copies', so git looks
        at the files' contents again before it calls one changed).
        """
        kept = self.kept_dir / commit
        if not kept.is_dir():
            return False
        try:
            link_clone(mirror, dest, head=commit, plan=self._plan(mirror))
            shutil.copy2(kept / ".git" / "index", dest / ".git" / "index")
            _copy_tree(kept, dest)
            st = kept.stat()
            os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError:
            self._plans.pop(mirror, None)  # a pack gone (git gc?): read the mirror again
            shutil.rmtree(dest, ignore_errors=True)
            return False
        return True

    def _trim_kept(self) -> None:
        entries = sorted((e for e in os.scandir(self.kept_dir) if not e.name.startswith(".")),
                         key=lambda e: e.stat().st_ctime)
        for entry in entries[:max(0, len(entries) - KEEP_TREES)]:
            trash = self.kept_dir / f".trash-{entry.name}-{threading.get_ident()}"
            try:
                os.rename(entry.path, trash)
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)

    def _mirror(self, url: str, commit: str, on_line: LineCallback | None,
                cancel: CancelToken | None) -> Path:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", url)[-80:]
        digest = hashlib.sha256(url.encode()).hexdigest()[:12]
        mirror = self.mirror_dir / f"{name}-{digest}.git"
        if (mirror, commit) in self._present:
            return mirror
        with self._changing_mirror(mirror), locked(mirror.with_suffix(".lock")):
            if not (mirror / "HEAD").exists():
                self._git(["init", "-q", "--bare", str(mirror)], on_line, cancel,
                          f"cannot create mirror of {url}")
            if not self._has_commit(mirror, commit):
                if on_line is not None:
                    on_line(f"Fetching {url}")
                # Objects stay in the pack they came in, however few: every step's
                # build directory links the mirror's object files, and a loose
                # object is a directory and a file to make and delete each time.
                status = runprocess.run(
                    ["git", "-C", str(mirror), "-c", "fetch.unpackLimit=1", "fetch", "-q",
                     "--prune", "--tags", url, "+refs/heads/*:refs/heads/*"],
                    on_line=on_line, cancel=cancel, env=_env())
                if status != 0:
                    raise SourceError(f"cannot fetch repository {url} (git fetch exited "
                                      f"with status {status}): does it exist?", url)
                if not self._has_commit(mirror, commit):
                    # Not on any branch or tag: servers that allow it send it by name.
                    runprocess.run(["git", "-C", str(mirror), "-c", "fetch.unpackLimit=1",
                                    "fetch", "-q", url, commit],
                                   on_line=on_line, cancel=cancel, env=_env())
                if not self._has_commit(mirror, commit):
                    raise SourceError(f"commit {commit} is not in repository {url}", url)
        self._present.add((mirror, commit))
        return mirror

    @contextlib.contextmanager
    def _changing_mirror(self, mirror: Path) -> Iterator[None]:
        with self._lock:
            self._changing[mirror] = self._changing.get(mirror, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._changing[mirror] -= 1
                self._generation[mirror] = self._generation.get(mirror, 0) + 1

    def _plan(self, mirror: Path) -> ClonePlan:
        """The mirror's `_clone_plan`, read once per generation (never kept mid-fetch)."""
        with self._lock:
            generation = self._generation.get(mirror, 0)
            kept = self._plans.get(mirror)
        if kept is not None and kept[0] == generation:
            return kept[1]
        plan = clone_plan(mirror)
        with self._lock:
            if not self._changing.get(mirror) and self._generation.get(mirror, 0) == generation:
                self._plans[mirror] = (generation, plan)
        return plan

    @staticmethod
    def _has_commit(mirror: Path, commit: str) -> bool:
        status = runprocess.run(["git", "-C", str(mirror), "cat-file", "-e",
                                 f"{commit}^{{commit}}"], env=_env())
        return status == 0

    @staticmethod
    def _commit_time(dest: Path, commit: str) -> int:
        lines: list[str] = []
        runprocess.run(["git", "-C", str(dest), "show", "-s", "--format=%ct", commit],
                       on_line=lines.append, env=_env())
        try:
            return int(lines[-1])
        except (IndexError, ValueError):
            raise SourceError(f"cannot read the commit time of {commit}") from None

    @staticmethod
    def _gitlink(dest: Path, commit: str, path: str, url: str) -> str:
        lines: list[str] = []
        runprocess.run(["git", "-C", str(dest), "ls-tree", commit, "--", path],
                       on_line=lines.append, env=_env())
        fields = lines[0].split() if lines else []
        if len(fields) < 3 or fields[1] != "commit":
            raise SourceError(f"submodule path '{path}' is not a submodule in {commit}", url)
        return fields[2]

    @staticmethod
    def _git(args: list[str], on_line: LineCallback | None, cancel: CancelToken | None,
             failure: str) -> None:
        output: list[str] = []

        def keep(line: str) -> None:
            output.append(line)
            if on_line is not None:
                on_line(line)

        status = runprocess.run(["git", *args], on_line=keep, cancel=cancel, env=_env())
        if status != 0:
            detail = output[-1] if output else f"exit status {status}"
            raise SourceError(f"{failure}: {detail}")


def _small_tree(root: Path, limit: int) -> bool:
    """Whether `root` (its .git aside) holds at most `limit` entries."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and ".git" in dirnames:
            dirnames.remove(".git")
        count += len(dirnames) + len(filenames)
        if count > limit:
            return False
    return True


def _copy_tree(src: Path, dest: Path) -> None:
    """Copy what `src` holds (its .git aside) into the existing `dest`: modes and times too."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        out = dest if rel == "." else dest / rel
        if rel == "." and ".git" in dirnames:
            dirnames.remove(".git")
        for name in list(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):
                dirnames.remove(name)
                filenames.append(name)
            else:
                (out / name).mkdir()
        for name in filenames:
            source = os.path.join(dirpath, name)
            if os.path.islink(source):
                os.symlink(os.readlink(source), out / name)
                os.utime(out / name, ns=_times_ns(os.lstat(source)), follow_symlinks=False)
            else:
                shutil.copy2(source, out / name)
    # Directories last: filling one moved its time.
    for dirpath, dirnames, _ in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        if rel == "." and ".git" in dirnames:
            dirnames.remove(".git")
        for name in dirnames:
            inner = os.path.join(rel, name)
            if not os.path.islink(src / inner):
                shutil.copystat(src / inner, dest / inner)


def _times_ns(st: os.stat_result) -> tuple[int, int]:
    return st.st_atime_ns, st.st_mtime_ns


def set_times(root: Path, when: int) -> None:
    """Give every file and directory under `root` (but not .git) atime and mtime `when`."""
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and ".git" in dirnames:
            dirnames.remove(".git")
        for name in (*filenames, *dirnames):
            os.utime(os.path.join(dirpath, name), (when, when), follow_symlinks=False)
    os.utime(root, (when, when))


def _env() -> dict[str, str]:
    return {**os.environ, **_GIT_ENV}



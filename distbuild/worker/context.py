"""What one running step has at hand: its node, directories, log, and the worker's services.

The chunk, stratum and system builders (worker.chunk, worker.assemble) get a
StepContext and nothing else; running a sandboxed command and unpacking an
input artifact, with their error reporting, live here once for all three.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distbuild import sandbox
from distbuild.runprocess import CancelToken
from distbuild.worker.artifacts import PackedArtifact
from distbuild.worker.cache import LocalArtifactCache, empty_sha256, write_empty
from distbuild.worker.errors import CommandFailed, DiskFull
from distbuild.worker.log import StepLog
from distbuild.worker.sources import GitSources

_UNPACK_THREADS = 4
# Below this much free space a failing command is taken to have filled the disk.
_FULL_BYTES = 64 * 1024


@dataclass
class WorkerSettings:
    """How a worker runs steps (the `worker:` section of the shared configuration).

    `staging_over_host`: when yes, the staging area is layered over the
    host's root read-only (see distbuild.sandbox), so chunks whose
    definitions bring no toolchain of their own build with the host's
    compiler and tools. When no, a `staging` chunk sees only its
    dependencies, as in Baserock; `bootstrap` chunks always see the host.
    """

    work_dir: Path
    jobs: int | None = None
    staging_over_host: bool = False
    bwrap: str = "bwrap"
    log_tail_lines: int = 20
    # Host paths builds must not read through the host layer, besides
    # sandbox.HOST_HIDDEN and the work directory (e.g. the worker's SSH key).
    hide_from_builds: list[Path] = field(default_factory=list)
    # The local artifact cache is trimmed to this size after each step
    # (least recently used first); None: never.
    cache_limit_mb: int | None = None
    # Finished steps' output directories kept in out/ (the newest).
    keep_outputs: int = 50

    @property
    def tmp_dir(self) -> Path:
        return self.work_dir / "tmp"

    @property
    def out_dir(self) -> Path:
        return self.work_dir / "out"

    @property
    def trash_dir(self) -> Path:
        return self.work_dir / "trash"

    def hidden_paths(self) -> list[Path]:
        """Host paths builds that see the host must not see."""
        return [*sandbox.HOST_HIDDEN, self.work_dir, *self.hide_from_builds]

    def host_masks(self) -> tuple[str, ...]:
        """bwrap operations hiding secrets from builds that see the host."""
        return sandbox.host_masks(self.work_dir / "empty", self.hidden_paths())

    def clean(self) -> None:
        """Remove what steps that crashed left behind (call when no step runs)."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        shutil.rmtree(self.trash_dir, ignore_errors=True)


@dataclass
class StepContext:
    """One step in progress; builders write only under `tmp` and `out`."""

    node: Any
    nodes: Any
    tmp: Path
    out: Path
    log: StepLog
    cancel: CancelToken
    settings: WorkerSettings
    cache: LocalArtifactCache
    sources: GitSources
    inputs: list[dict[str, str]] = field(default_factory=list)
    extra_meta: dict[str, Any] = field(default_factory=dict)
    command_seconds: float = 0.0

    def run_command(self, phase: str, command: str, spec: sandbox.SandboxSpec) -> None:
        """Echo `command`, run it as `spec` says, and raise the right error if it fails."""
        self.log.command(command)
        self.log.output_started()
        started = time.monotonic()
        try:
            status = sandbox.run(spec, on_line=self.log.line, cancel=self.cancel,
                                 bwrap=self.settings.bwrap)
        except sandbox.SandboxError as e:
            hint = ""
            if "execvp sh" in e.what and spec.root is not None:
                hint = ("; the staging area has no /bin/sh (these definitions bring no shell "
                        "of their own: set the worker's staging_over_host to build with the "
                        "host's tools)")
            raise sandbox.SandboxError(f"{e.what} (running {phase} command {command!r}){hint}",
                                       self.node.id) from None
        finally:
            self.command_seconds += time.monotonic() - started
        if status == 0:
            return
        tail = self.log.last_lines
        if any("No space left on device" in line for line in tail) or self._disk_full():
            raise DiskFull(f"no space left on device while running {phase} command "
                           f"{command!r} (exit status {status})", self.node.id)
        raise CommandFailed(self.node.id, phase, command, status, tail)

    def empty_artifact(self, filename: str) -> PackedArtifact:
        """The artifact holding nothing, as `out/filename`: a hard link to one copy.

        Most of a chunk's split artifacts are empty; a link allocates no
        inode, which is what creating a file costs on a busy ext4 disk. The
        copy is never written to once made (nor is anything in `out`).
        """
        shared = self.settings.work_dir / "empty-artifact"
        dest = self.out / filename
        try:
            os.link(shared, dest)
        except FileNotFoundError:
            tmp = shared.with_name(f".{shared.name}.{os.getpid()}.{threading.get_ident()}")
            write_empty(tmp, filename)
            os.replace(tmp, shared)
            os.link(shared, dest)
        return PackedArtifact(filename, dest, empty_sha256(), shared.stat().st_size)

    def input_tree(self, filename: str, sha256: str | None = None) -> Path | None:
        """Input artifact `filename` (checked against `sha256` if given), unpacked in the
        local cache, for staging; None when it holds nothing. Never write into it."""
        self.cancel.check()
        tree = self.cache.unpacked(filename, sha256)
        self.record_input(filename, self.cache.sha256(filename))
        with os.scandir(tree) as entries:
            return tree if next(entries, None) is not None else None

    def input_trees(self, wanted: list[tuple[str, str | None]]) -> list[Path]:
        """`input_tree` of each (filename, sha256), in order, leaving out empty ones
        (which need not be downloaded at all: see `LocalArtifactCache.known_empty`).

        Those not yet unpacked here are downloaded and unpacked a few at a
        time, each source's artifacts by one thread (whether one is empty
        may take one query per source): most of the time is waiting for the
        network and the kernel, which threads overlap.
        """
        empty: set[tuple[str, str | None]] = set()
        todo: dict[str, list[tuple[str, str | None]]] = {}
        nothing = empty_sha256()
        for w in wanted:
            if (w[1] or self.cache.recorded_sha256(w[0])) == nothing:
                empty.add(w)  # most are, and known to be without a thread or a query
            elif not self.cache.is_unpacked(w[0]):
                todo.setdefault(w[0][:64], []).append(w)

        def prepare(items: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
            empty = []
            for item in items:
                self.cancel.check()
                if self.cache.known_empty(*item):
                    empty.append(item)
                else:
                    self.cache.prepare(*item)  # mounted, if an image, by input_tree
            return empty

        if len(todo) > 1:
            with ThreadPoolExecutor(_UNPACK_THREADS, thread_name_prefix="unpack") as pool:
                for found in pool.map(prepare, todo.values()):
                    empty.update(found)
        else:
            for items in todo.values():
                empty.update(prepare(items))
        trees = []
        for filename, sha256 in wanted:
            if (filename, sha256) in empty:
                self.record_input(filename, sha256 or self.cache.sha256(filename))
            elif (tree := self.input_tree(filename, sha256)) is not None:
                trees.append(tree)
        return trees

    def input_tarball(self, filename: str, sha256: str | None = None) -> Path:
        """Input artifact `filename` as the tarball it came as."""
        self.cancel.check()
        local = self.cache.fetch(filename, sha256)
        self.record_input(filename, self.cache.sha256(filename))
        return local

    def record_input(self, filename: str, sha256: str) -> None:
        """Note an artifact the step read, for its metadata."""
        self.inputs.append({"filename": filename, "sha256": sha256})

    def _disk_full(self) -> bool:
        try:
            st = os.statvfs(self.tmp)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < _FULL_BYTES

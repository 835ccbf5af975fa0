"""One build step: a chunk, stratum or system node turned into artifacts.

A step works in a fresh temporary directory under the worker's work
directory and publishes its outputs with one rename when everything
succeeded, so a failed, cancelled or crashed step leaves nothing that a
retry could trip over (`WorkerSettings.clean` removes the leftovers of a
crash). What it publishes, in `out/CACHEKEY/`:

- the node's artifacts (`KEY.KIND.NAME`, see distbuild.worker.artifacts),
- `KEY.build-log`: the step's log (see distbuild.worker.log),
- `KEY.meta`: JSON describing the step, its inputs and every output's sha256.

The builders are in worker.chunk and worker.assemble; see docs/worker.md.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distbuild.errors import DistbuildError
from distbuild.runprocess import CancelToken
from distbuild.worker import artifacts
from distbuild.worker.artifacts import PackedArtifact
from distbuild.worker.assemble import build_stratum, build_system
from distbuild.worker.cache import LocalArtifactCache, empty_sha256
from distbuild.worker.cache import _spread_subdirectories as spread_subdirectories
from distbuild.worker.chunk import build_chunk, staged_chunks
from distbuild.worker.context import StepContext, WorkerSettings
from distbuild.worker.errors import DiskFull, StepError
from distbuild.worker.log import LogCallback, StepLog
from distbuild.worker.sources import GitSources

__all__ = ["META_FORMAT", "StepResult", "StepRunner", "WorkerSettings", "load_meta",
           "staged_chunks"]

META_FORMAT = "distbuild-step/1"

_BUILDERS = {"chunk": build_chunk, "stratum": build_stratum, "system": build_system}


@dataclass
class StepResult:
    """A finished step's outputs, all in `directory`."""

    node_id: str
    cache_key: str
    directory: Path
    artifacts: list[PackedArtifact]
    log: PackedArtifact
    meta: PackedArtifact
    seconds: float
    command_seconds: float = 0.0

    @property
    def files(self) -> list[PackedArtifact]:
        """Everything to upload: the artifacts, then the log and the metadata."""
        return [*self.artifacts, self.log, self.meta]


class StepRunner:
    """Runs steps with one worker's settings, sources and local artifact cache."""

    def __init__(self, settings: WorkerSettings, sources: GitSources,
                 cache: LocalArtifactCache) -> None:
        self.settings = settings
        self.sources = sources
        self.cache = cache

    def run(self, node: Any, nodes: Mapping[str, Any], *, on_line: LogCallback | None = None,
            cancel: CancelToken | None = None, keep: bool = True) -> StepResult:
        """Build `node`; `nodes` must hold at least its transitive dependencies.

        With `keep` false (a reproducibility check) the artifacts are not added to
        the local cache and their directory is not the one uploads come from.

        Raises a StepError subclass (or runprocess.Cancelled, or
        sandbox.SandboxError) on failure, having removed everything it wrote.
        """
        if node.kind not in _BUILDERS:
            raise StepError(f"unknown node kind '{node.kind}'", node.id)
        started = time.monotonic()
        self._make_tmp_dir()
        tmp = Path(tempfile.mkdtemp(prefix=f"{node.kind}-{node.name}-",
                                    dir=self.settings.tmp_dir))
        try:
            out = tmp / "out"
            out.mkdir()
            log = StepLog(out / f"{node.cache_key}.build-log", on_line,
                          self.settings.log_tail_lines)
            ctx = StepContext(node, nodes, tmp, out, log, cancel or CancelToken(),
                              self.settings, self.cache, self.sources)
            try:
                log.line(f"Building {node.id} ({node.cache_key}) on {platform.node()}")
                produced = _BUILDERS[node.kind](ctx)
                log.line(f"Finished building {node.id}")
            except DistbuildError as e:
                log.line(f"Build of {node.id} failed: {e.what.splitlines()[0]}")
                raise
            finally:
                log.close()
            if log.error is not None:
                raise log.error
            return self._publish(ctx, produced, time.monotonic() - started, keep)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DiskFull(f"no space left on device ({e.filename or 'work directory'})",
                               node.id) from None
            raise
        finally:
            self._discard(tmp)

    def _make_tmp_dir(self) -> None:
        """The directory steps work in, made so that ext4 spreads their directories.

        Without a journal, ext4 skips every inode of a block group freed in
        the last 30 s when it creates a file there; all of a worker's steps
        in one group (with the deleted trees of those before) made each file
        or directory a step creates cost 0.3-0.7 ms instead of 0.04 (perf:
        `recently_deleted` under `ext4_create`, a third of a worker's CPU in
        the sleep graph). Flagged as a top directory, each step's directory
        lands in a group of its own choosing.
        """
        tmp_dir = self.settings.tmp_dir
        if not tmp_dir.is_dir():
            tmp_dir.mkdir(parents=True, exist_ok=True)
            spread_subdirectories(tmp_dir)

    def _discard(self, tmp: Path) -> None:
        """Move a step's directory out of the way at once; delete it in the background.

        Deleting thousands of files can take longer than the step itself; the
        next step (or a retry of this one) never looks in the trash.
        """
        self.settings.trash_dir.mkdir(parents=True, exist_ok=True)
        trash = self.settings.trash_dir / tmp.name
        try:
            os.rename(tmp, trash)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        _TRASH.put(trash)

    def _publish(self, ctx: StepContext, produced: list[PackedArtifact],
                 seconds: float, keep: bool = True) -> StepResult:
        node = ctx.node
        log_name = f"{node.cache_key}.build-log"
        log = artifacts.describe(ctx.out / log_name, log_name)
        meta_name = f"{node.cache_key}.meta"
        # One line, sorted keys: json's C encoder (indenting takes its Python one,
        # 2.6 ms of a step with 210 inputs).
        _write_compact_json(ctx.out / meta_name, {
            "format": META_FORMAT, "node": node.id, "kind": node.kind, "name": node.name,
            "cache_key": node.cache_key, "arch": node.arch, "worker": platform.node(),
            "seconds": round(seconds, 3), "inputs": ctx.inputs, **ctx.extra_meta,
            "artifacts": {a.filename: {"sha256": a.sha256, "size": a.size}
                          for a in [*produced, log]},
        })
        meta = artifacts.describe(ctx.out / meta_name, meta_name)
        final = self.settings.out_dir / (node.cache_key if keep else f"verify-{node.cache_key}")
        self.settings.out_dir.mkdir(parents=True, exist_ok=True)
        if final.exists():
            # An earlier build of the same key: replace it whole, never merge.
            os.rename(final, ctx.tmp / "replaced")
        os.rename(ctx.out, final)
        _OUTPUTS.published(self.settings.out_dir, final.name)
        moved = [PackedArtifact(a.filename, final / a.filename, a.sha256, a.size)
                 for a in [*produced, log, meta]]
        if keep:
            self.cache.add_all(moved[:len(produced)])
        for artifact in moved[:len(produced)] if keep else ():
            if node.kind == "chunk" and artifact.sha256 != empty_sha256():
                # The next steps here will likely stage it: unpack it now, once.
                self.cache.unpacked(artifact.filename, artifact.sha256)
        self._trim()
        return StepResult(node.id, node.cache_key, final, moved[:len(produced)],
                          moved[-2], moved[-1], seconds, ctx.command_seconds)


    def _trim(self) -> None:
        """Keep the worker's disk bounded: old outputs and least used artifacts go."""
        if self.settings.cache_limit_mb is not None:
            self.cache.trim(self.settings.cache_limit_mb * 1024 * 1024)
        out_dir = self.settings.out_dir
        names = os.listdir(out_dir)
        if len(names) <= self.settings.keep_outputs:
            return  # nothing to drop: no need to look at each one's time
        for name in _OUTPUTS.oldest(out_dir, names, len(names) - self.settings.keep_outputs):
            trash = self.settings.trash_dir / f"out-{name}"
            try:
                os.rename(out_dir / name, trash)
            except OSError:
                continue
            _TRASH.put(trash)


class _OutputOrder:
    """The outputs in `out/`, oldest first, as this process published them.

    A worker past `keep_outputs` steps stat'ed every one of them after each
    step to find the oldest; the order is known once read. A listing that
    does not match what is known (another process, a restart) is read again
    by modification time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order: dict[str, list[str]] = {}

    def published(self, out_dir: Path, name: str) -> None:
        """`name` is now the newest output in `out_dir`."""
        with self._lock:
            order = self._order.get(str(out_dir))
            if order is not None:
                if name in order:
                    order.remove(name)
                order.append(name)

    def oldest(self, out_dir: Path, names: list[str], count: int) -> list[str]:
        """The `count` oldest of `names` (the listing of `out_dir`), taken out of the order."""
        with self._lock:
            order = self._order.get(str(out_dir))
            if order is None or len(order) != len(names) or set(order) != set(names):
                order = sorted(names, key=lambda n: _mtime(out_dir / n))
                self._order[str(out_dir)] = order
            dropped, order[:count] = order[:count], []
            return dropped


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


_OUTPUTS = _OutputOrder()


class _Trash:
    """One thread that deletes what steps threw away, oldest first.

    A thread started for each step's directory cost a clone, its stack's
    pages and a join per step; the deleting itself is the kernel's either way.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, path: Path) -> None:
        """Delete `path` (already renamed into the trash directory) in the background."""
        self._queue.put(path)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="trash", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            shutil.rmtree(self._queue.get(), ignore_errors=True)


_TRASH = _Trash()


def _write_compact_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, sort_keys=True) + "\n")


def load_meta(path: Path) -> dict[str, Any]:
    """Read a step's `KEY.meta` or a system's `baserock/NAME.meta` file."""
    return json.loads(path.read_text())

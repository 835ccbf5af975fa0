"""Fetching chunk artifacts before the step that stages them (`artifact-prefetch` hints).

The controller names chunk artifacts other workers just built that queued
steps will stage (distbuild.controller.prefetch). One background thread
takes them in order and has a child process (`python -m
distbuild.worker.prefetch DIR`, at nice 10) download and unpack each into
the local cache exactly as a step would (`LocalArtifactCache.prepare`:
checked against its sha256, made under a temporary name, renamed into
place whole), so a step later finds it ready. A process, not a thread:
unpacking is mostly Python, and in the worker's process it would hold the
GIL against the running steps, which no nice value can lower; the child
runs at nice 0 while a step of the worker stages (it may be waiting for
the very artifact the child makes).

- What a failed or cut-short prefetch leaves is never staged: the cache's
  files and trees appear only complete, under their final names; a step
  that needs it fetches it itself.
- A step that needs an artifact being prefetched waits for that fetch (the
  cache's lock per artifact) instead of starting a second one.
- Steps come first: the thread starts an artifact only when no step of this
  worker has been fetching or unpacking inputs for a moment
  (distbuild.worker.activity), and runs one artifact at a time.
- Room: where the worker has `cache_limit_mb`, a prefetch is skipped if the
  cache would then hold more than the limit (the tarball plus
  IMAGE_FACTOR times its size for the unpacked image). A prefetch never
  trims: what steps use is never deleted to make room for a guess. What it
  fetched is trimmed like anything else, least recently used first.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from distbuild.errors import DistbuildError
from distbuild.trove.client import CacheClient
from distbuild.worker import activity
from distbuild.worker.cache import LocalArtifactCache, empty_sha256
from distbuild.worker.remote import TroveArtifactSource

# An image is uncompressed: about 2.3x its gzip tarball for binaries, more for text.
IMAGE_FACTOR = 4
NICE = 10
_NAME = re.compile(r"[0-9a-f]{64}\.chunk\.[^/\x00]+\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class Prefetcher:
    """A queue of artifacts to fetch and unpack, and the one thread that does it."""

    def __init__(self, directory: Path, limit_mb: int | None,
                 log: Callable[[str], None]) -> None:
        self.directory = directory
        self.limit = None if limit_mb is None else limit_mb * 1024 * 1024
        self.log = log
        self.fetched = 0
        self.skipped = 0  # for want of room
        self._queue: deque[tuple[str, str, str, int]] = deque()
        self._queued: set[str] = set()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._local: LocalArtifactCache | None = None
        self._usage: int | None = None
        self._child: _Child | None = None

    def add(self, url: str, artifacts: Mapping[str, Any]) -> None:
        """Queue `artifacts` (filename -> {sha256, size}) from the artifact cache at `url`."""
        items = []
        for filename, info in artifacts.items():
            sha256 = info.get("sha256") if isinstance(info, dict) else None
            size = info.get("size") if isinstance(info, dict) else None
            if (not _NAME.match(filename) or not isinstance(sha256, str)
                    or not _SHA256.match(sha256) or not isinstance(size, int) or size < 0):
                self.log(f"prefetch: ignoring {filename[:120]!r}: not a chunk artifact "
                         "with a sha256 and size")
                continue
            items.append((url, filename, sha256, size))
        # Empty artifacts need no fetch, only a record that they are (one write for all).
        empty = empty_sha256()
        if any(item[2] == empty for item in items):
            try:
                self._cache().remember_empties((f, s) for _, f, s, _ in items if s == empty)
            except OSError as e:  # a full disk, say: a step staging them asks the trove
                self.log(f"prefetch: cannot record empty artifacts ({e})")
            items = [item for item in items if item[2] != empty]
        with self._changed:
            if self._stop.is_set():
                return
            for item in items:
                if item[1] not in self._queued:
                    self._queued.add(item[1])
                    self._queue.append(item)
            if self._thread is None and self._queue:
                self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
                self._thread.start()
            self._changed.notify()

    def stop(self) -> None:
        """Fetch nothing more (the artifact under way finishes or is abandoned whole)."""
        with self._changed:
            self._stop.set()
            self._queue.clear()
            self._changed.notify()
            child, self._child = self._child, None
        if child is not None:
            child.close()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._stop.is_set():
                    self._usage = None  # counted again for the next batch
                    self._changed.wait()
                if self._stop.is_set():
                    return
                url, filename, sha256, size = self._queue.popleft()
            try:
                self._fetch(url, filename, sha256, size)
            except (DistbuildError, OSError) as e:
                self.log(f"prefetch of {filename} failed ({e}); a step that needs it "
                         "fetches it itself")
            except Exception as e:  # a bug: the step will fetch it; say so, go on
                self.log(f"prefetch of {filename}: internal error: {e!r}")
            finally:
                with self._changed:
                    self._queued.discard(filename)

    def _fetch(self, url: str, filename: str, sha256: str, size: int) -> None:
        cache = self._cache()
        if cache.known_empty(filename, sha256):
            cache.remember_empty(filename, sha256)  # the step staging it asks nobody
            return
        activity.wait_until_quiet(stop=self._stop)
        if self._stop.is_set() or cache.is_unpacked(filename):
            return
        if self.limit is not None:
            if self._usage is None:
                self._usage = cache.usage()
            need = size * (1 + IMAGE_FACTOR)
            if self._usage + need > self.limit:
                self.skipped += 1
                self.log(f"prefetch of {filename} skipped: the local cache holds "
                         f"{self._usage // 2**20} MiB of its {self.limit // 2**20} MiB")
                return
            self._usage += need
        started = time.monotonic()
        with self._changed:
            if self._stop.is_set():
                return
            if self._child is None or not self._child.alive():
                if self._child is not None:
                    self._child.close()  # reaped, and no longer reniced on staging
                self._child = _Child(self.directory)
            child = self._child
        child.prepare(url, filename, sha256)
        self.fetched += 1
        self.log(f"prefetched {filename} ({size} bytes) in {time.monotonic() - started:.2f} s")

    def _cache(self) -> LocalArtifactCache:
        # Only asked what it holds here: the child downloads.
        if self._local is None:
            self._local = LocalArtifactCache(self.directory)
        return self._local

class _Child:
    """The prefetch process: one artifact at a time, asked and answered in JSON lines."""

    def __init__(self, directory: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distbuild.worker.prefetch", str(directory)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._renice(False)
        activity.listeners.append(self._renice)

    def _renice(self, staging: bool) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid,
                           os.getpriority(os.PRIO_PROCESS, 0) + (0 if staging else NICE))
        except OSError:  # gone, or not allowed to raise it again: it only runs slower
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def prepare(self, url: str, filename: str, sha256: str) -> None:
        """Have the child fetch and unpack one artifact; DistbuildError if it could not."""
        try:
            self.proc.stdin.write(json.dumps({"url": url, "filename": filename,
                                              "sha256": sha256}).encode() + b"\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (OSError, ValueError):
            line = b""
        try:
            answer = json.loads(line) if line else {"error": "the prefetch process ended"}
        except ValueError:
            answer = {"error": "the prefetch process answered nonsense"}
        if "error" in answer:
            raise DistbuildError(str(answer["error"]))

    def close(self) -> None:
        """End the child (it finishes or abandons, whole, what it was making)."""
        if self._renice in activity.listeners:
            activity.listeners.remove(self._renice)
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve(directory: Path) -> None:
    """The child's loop: each line on stdin names an artifact to prepare; one answer each."""
    caches: dict[str, LocalArtifactCache] = {}
    for line in sys.stdin.buffer:
        try:
            ask = json.loads(line)
            url, filename, sha256 = ask["url"], ask["filename"], ask["sha256"]
            cache = caches.get(url)
            if cache is None:
                cache = caches[url] = LocalArtifactCache(
                    directory, TroveArtifactSource(CacheClient(url)))
            cache.prepare(filename, sha256, background=True)
            answer: dict[str, Any] = {"ok": True}
        except (DistbuildError, OSError) as e:
            answer = {"error": str(e)}
        except Exception as e:  # a bug: the step will fetch it; say what happened
            answer = {"error": f"internal error: {e!r}"}
        sys.stdout.buffer.write(json.dumps(answer).encode() + b"\n")
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))

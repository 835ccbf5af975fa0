"""Identical small files of the store kept once on disk: hard links to one durable copy.

Most sources of a build hold several identical artifacts (the 45-byte empty
tarball of every split that got no files: six of a chunk's nine files in the
sleep benchmark), and the store wrote and fsynced each one. An upload keeps
its small files in memory until it is sealed; one whose bytes the store
already holds durably under their sha256 becomes a link to that copy: the
upload directory's own fsync makes the new name durable, and the bytes are
never written again. A copy is made when one upload holds the same bytes
twice, and reused from then on. Only files up to SHARE_MAX
are shared (large identical artifacts are rare and their fsync is their
write's, not a fixed cost). Stored files are never written in place, so a
link is as good as a copy; `collect` drops copies no source links any more.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

SHARE_MAX = 64 << 10


class _Entry(Protocol):
    filename: str
    size: int
    sha256: str


class SharedFiles:
    """Durable copies of small files under `root`, named by sha256."""

    def __init__(self, root: Path, sync: Callable[[Path], None] | None):
        """`sync` makes one file's bytes durable (None: the store does not fsync)."""
        self.root = Path(root)
        self.sync = sync
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(".new-*"):  # a crash between link and rename
            leftover.unlink(missing_ok=True)

    def place(self, directory: Path, files: Iterable[tuple[_Entry, bytes]]) -> set[str]:
        """Put each small file (its bytes checked against the entry's sha256) into
        `directory`: a link to the durable copy of its bytes where there is one,
        written otherwise; returns the names that need no fsync of their own."""
        groups: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        for entry, data in files:
            groups[entry.sha256].append((entry.filename, data))
        durable: set[str] = set()
        for digest, same in groups.items():
            copy = self.root / digest
            for i, (name, data) in enumerate(same):
                path = directory / name
                if _link(copy, path):
                    durable.add(name)
                    continue
                # No copy yet (or past the filesystem's link limit, or collected meanwhile).
                _write(path, data)
                if i == 0 and len(same) > 1 and self._adopt(path, digest):
                    durable.add(name)  # the copy now: its bytes were synced on the way
        return durable

    def collect(self) -> int:
        """Remove copies that no stored source links any more; how many went."""
        removed = 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                try:
                    if not entry.name.startswith(".") and entry.stat().st_nlink <= 1:
                        os.unlink(entry.path)
                        removed += 1
                except OSError:
                    continue
        return removed

    def _adopt(self, path: Path, digest: str) -> bool:
        """Make `path` the durable copy of `digest`: its bytes synced before its name exists."""
        temporary = self.root / f".new-{digest}-{os.getpid()}-{threading.get_ident()}"
        try:
            if self.sync is not None:
                self.sync(path)
            os.link(path, temporary)
            # Two uploads adopting the same bytes at once: either copy will do.
            os.rename(temporary, self.root / digest)
        except OSError:
            temporary.unlink(missing_ok=True)
            return False
        return True


def _link(copy: Path, path: Path) -> bool:
    """Make `path` a link to `copy`; False if that cannot be."""
    try:
        os.link(copy, path)
    except OSError:
        return False
    return True


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb", buffering=0) as f:
        view = memoryview(data)
        while view:
            view = view[f.write(view):]

"""Identical small files of the store kept once on disk: hard links to one durable copy.

Most sources of a build hold several identical artifacts (the 45-byte empty
tarball of every split that got no files: six of a chunk's nine files in the
sleep benchmark), and the store wrote and fsynced each one. A file whose
bytes the store already holds durably under their sha256 is linked to that
copy instead: the upload directory's own fsync makes the new name durable,
and the bytes are never flushed again. A copy is made when one upload holds
the same bytes twice, or reused when it exists. Only files up to SHARE_MAX
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

    def share(self, directory: Path, entries: Iterable[_Entry]) -> set[str]:
        """Link each small file of `directory` (its bytes already checked against the
        entry's sha256) to the durable copy of those bytes; the names linked, which
        need no fsync of their own."""
        groups: dict[str, list[str]] = defaultdict(list)
        for entry in entries:
            if entry.size <= SHARE_MAX:
                groups[entry.sha256].append(entry.filename)
        durable: set[str] = set()
        for digest, filenames in groups.items():
            copy = self.root / digest
            if not copy.exists():
                if len(filenames) < 2 or not self._adopt(directory / filenames[0], digest):
                    continue
                # That file is the copy now (one inode): linking it again would leave
                # the temporary name behind (rename of a file onto itself does nothing).
                durable.add(filenames.pop(0))
            durable.update(name for name in filenames if _link(copy, directory / name))
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
    """Replace `path` by a link to `copy`; False (and `path` untouched) if that cannot be."""
    temporary = path.with_name(f".link-{path.name}")
    try:
        # EMLINK past the filesystem's link limit, or the copy just collected: keep the file.
        os.link(copy, temporary)
    except OSError:
        return False
    try:
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        return False
    return True

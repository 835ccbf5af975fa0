"""A machine-local cache of artifacts fetched from the trove, for workers.

Each artifact is downloaded once per machine, checked against the sha256 the
trove recorded, and kept under its filename; concurrent steps wanting the same
artifact wait for one download (a lock file per artifact) instead of fetching
it twice. Artifacts are immutable (content addressed), so a file present here
is always the right one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from distbuild.trove import names
from distbuild.trove.client import CacheClient


class LocalArtifactCache:
    """Artifacts under `root`, filled on demand from `client`."""

    def __init__(self, root: Path, client: CacheClient):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.client = client
        self.downloads = 0

    def path(self, filename: str) -> Path:
        """Where artifact `filename` is (or would be) kept."""
        return self.root / names.check_filename(filename)

    def get(self, filename: str, expected_sha256: str | None = None) -> Path:
        """The local file of artifact `filename`, downloading it if this machine lacks it."""
        dest = self.path(filename)
        if dest.exists():
            return dest
        lock_path = self.root / f".{filename}.lock"
        try:
            with open(lock_path, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not dest.exists():
                    self.client.download(filename, dest, expected_sha256)
                    self.downloads += 1
        finally:
            try:
                os.unlink(lock_path)
            except FileNotFoundError:
                pass
        return dest

"""Artifacts on a worker: a local cache in front of the shared one.

`LocalArtifactCache` keeps every artifact the worker has downloaded or
built, so each is downloaded at most once per worker, and checks each
download against the sha256 its source declares (or the caller expects)
before anyone can use it. Concurrent steps wanting the same artifact wait
for one download (a lock file per artifact). Checked sha256s are appended
to one index file (`index`: `SHA256 FILENAME` lines), which costs one
write per artifact instead of a file and a rename each.

`ArtifactSource` is what the local cache downloads from: the trove's cache
client, or `DirectoryArtifactStore` (a plain directory, used by tests and
by `distbuild build-step` without a trove).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Protocol

from distbuild.files import locked
from distbuild.worker.artifacts import ArtifactInfo, PackedArtifact, describe
from distbuild.worker.errors import CorruptArtifact, MissingArtifact


class ArtifactSource(Protocol):
    """Somewhere artifacts can be downloaded from."""

    def download(self, filename: str, dest: Path) -> str | None:
        """Write artifact `filename` to `dest`; return its declared sha256 (None: unknown).

        Raises MissingArtifact when the source does not have it.
        """

    def info(self, filename: str) -> ArtifactInfo | None:
        """The recorded sha256 and size of `filename` without downloading it; None: unknown."""


class DirectoryArtifactStore:
    """Artifacts as files in one directory, each with a `.sha256` file beside it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def download(self, filename: str, dest: Path) -> str | None:
        """Copy an artifact out of the directory."""
        path = self.directory / filename
        try:
            shutil.copyfile(path, dest)
        except FileNotFoundError:
            raise MissingArtifact(f"artifact {filename} is not in the artifact cache",
                                  str(self.directory)) from None
        digest = self.directory / f"{filename}.sha256"
        return digest.read_text().strip() if digest.exists() else None

    def has(self, filename: str) -> bool:
        """Whether the directory holds `filename`."""
        return (self.directory / filename).exists()

    def info(self, filename: str) -> ArtifactInfo | None:
        """The recorded sha256 and size, or None if the artifact or its sha256 is missing."""
        path = self.directory / filename
        digest = self.directory / f"{filename}.sha256"
        if not path.exists() or not digest.exists():
            return None
        return ArtifactInfo(filename, digest.read_text().strip(), path.stat().st_size)

    def upload(self, artifacts: list[PackedArtifact]) -> None:
        """Store artifacts; each file appears complete or not at all."""
        for artifact in artifacts:
            _atomic_copy(artifact.path, self.directory / artifact.filename)
            _atomic_text(self.directory / f"{artifact.filename}.sha256", artifact.sha256 + "\n")


class LocalArtifactCache:
    """The worker's own copies of artifacts, each checked once against its sha256."""

    def __init__(self, directory: Path, source: ArtifactSource | None = None) -> None:
        self.directory = directory
        self.source = source
        self.downloads = 0
        self.downloaded_bytes = 0  # reported to the controller with each built step
        directory.mkdir(parents=True, exist_ok=True)
        self._index = directory / "index"
        self._digests: dict[str, str] = {}
        self._lock = threading.Lock()
        self._read_index()

    def path(self, filename: str) -> Path:
        """Where `filename` is (or would be) kept locally."""
        return self.directory / filename

    def fetch(self, filename: str, sha256: str | None = None) -> Path:
        """The local path of a verified copy of `filename`, downloading it if needed."""
        local = self.path(filename)
        if local.exists():
            self._check_expected(local, filename, sha256)
            _touch(local)
            return local
        with locked(self.directory / f".{filename}.lock"):
            if not local.exists():
                self._download(filename, sha256, local)
        return local

    def _download(self, filename: str, sha256: str | None, local: Path) -> None:
        if self.source is None:
            raise MissingArtifact(f"artifact {filename} is not in the local artifact cache "
                                  "and there is no artifact cache to fetch it from")
        fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=f".{filename}.")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            declared = self.source.download(filename, tmp)
            actual = describe(tmp, filename).sha256
            for expected, who in ((declared, "the artifact cache"), (sha256, "its referrer")):
                if expected is not None and expected != actual:
                    raise CorruptArtifact(f"download has sha256 {actual} but {who} says "
                                          f"{expected}", filename)
            self._write_digest(filename, actual)
            self.downloaded_bytes += tmp.stat().st_size
            os.replace(tmp, local)
            self.downloads += 1
        finally:
            tmp.unlink(missing_ok=True)

    def _check_expected(self, local: Path, filename: str, sha256: str | None) -> None:
        if sha256 is None:
            return
        recorded = self.sha256(filename)
        if recorded != sha256:
            raise CorruptArtifact(f"local copy has sha256 {recorded} but its referrer says "
                                  f"{sha256}", filename)

    def sha256(self, filename: str) -> str:
        """The recorded sha256 of a local artifact (computed once, when it arrived)."""
        if filename not in self._digests:
            self._read_index()  # another worker process may have added it
        if filename not in self._digests:
            self._write_digest(filename, describe(self.path(filename), filename).sha256)
        return self._digests[filename]

    def describe(self, filename: str) -> PackedArtifact:
        """A local artifact with its recorded sha256 and size."""
        path = self.path(filename)
        return PackedArtifact(filename, path, self.sha256(filename), path.stat().st_size)

    def info(self, filename: str) -> ArtifactInfo:
        """An artifact's sha256 and size, asking the source before downloading it.

        A stratum step needs only this of its chunks' artifacts, which may
        be gigabytes.
        """
        if self.path(filename).exists():
            local = self.describe(filename)
            return ArtifactInfo(filename, local.sha256, local.size)
        remote = self.source.info(filename) if self.source is not None else None
        if remote is not None:
            return remote
        self.fetch(filename)
        local = self.describe(filename)
        return ArtifactInfo(filename, local.sha256, local.size)

    def add(self, artifact: PackedArtifact) -> None:
        """Keep a copy of an artifact this worker built."""
        self._write_digest(artifact.filename, artifact.sha256)
        try:
            # A complete file linked in place appears whole: no rename needed.
            os.link(artifact.path, self.path(artifact.filename))
        except FileExistsError:
            _atomic_copy(artifact.path, self.path(artifact.filename))
        except OSError:
            _atomic_copy(artifact.path, self.path(artifact.filename))

    def trim(self, max_bytes: int, min_age: float = 600.0) -> list[str]:
        """Delete least recently used artifacts until the cache holds at most `max_bytes`.

        Artifacts used in the last `min_age` seconds are kept whatever the
        size, so that a running step never loses an input it is about to
        unpack. Returns the names deleted.
        """
        entries = []
        for entry in os.scandir(self.directory):
            if entry.name.startswith(".") or entry.name == "index" or not entry.is_file():
                continue
            st = entry.stat()
            entries.append((st.st_mtime, st.st_size, entry.name))
        total = sum(size for _, size, _ in entries)
        deleted = []
        now = time.time()
        for mtime, size, name in sorted(entries):
            if total <= max_bytes:
                break
            if now - mtime < min_age:
                continue
            (self.directory / name).unlink(missing_ok=True)
            total -= size
            deleted.append(name)
        return deleted

    def _write_digest(self, filename: str, sha256: str) -> None:
        with self._lock, self._index.open("a") as index:
            fcntl.flock(index, fcntl.LOCK_EX)
            index.write(f"{sha256} {filename}\n")
            self._digests[filename] = sha256

    def _read_index(self) -> None:
        try:
            text = self._index.read_text()
        except FileNotFoundError:
            return
        with self._lock:
            for line in text.splitlines():
                digest, _, name = line.partition(" ")
                if len(digest) == 64 and name:
                    self._digests[name] = digest


def _touch(path: Path) -> None:
    # Last use, for trim(): mtime, since atime is often not kept (noatime).
    try:
        os.utime(path)
    except OSError:
        pass


def _atomic_copy(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_text(dest: Path, text: str) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, dest)



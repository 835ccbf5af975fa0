"""Artifacts on a worker: a local cache in front of the shared one.

`LocalArtifactCache` keeps every artifact the worker has downloaded or
built, so each is downloaded at most once per worker, and checks each
download against the sha256 its source declares (or the caller expects)
before anyone can use it. Concurrent steps wanting the same artifact wait
for one download (a lock file per artifact).

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
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from distbuild.worker.artifacts import PackedArtifact, describe
from distbuild.worker.errors import CorruptArtifact, MissingArtifact


class ArtifactSource(Protocol):
    """Somewhere artifacts can be downloaded from."""

    def download(self, filename: str, dest: Path) -> str | None:
        """Write artifact `filename` to `dest`; return its declared sha256 (None: unknown).

        Raises MissingArtifact when the source does not have it.
        """


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
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, filename: str) -> Path:
        """Where `filename` is (or would be) kept locally."""
        return self.directory / filename

    def fetch(self, filename: str, sha256: str | None = None) -> Path:
        """The local path of a verified copy of `filename`, downloading it if needed."""
        local = self.path(filename)
        if local.exists():
            self._check_expected(local, filename, sha256)
            return local
        with _locked(self.directory / f".{filename}.lock"):
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
        digest = self.directory / f".{filename}.sha256"
        if digest.exists():
            return digest.read_text().strip()
        value = describe(self.path(filename), filename).sha256
        self._write_digest(filename, value)
        return value

    def describe(self, filename: str) -> PackedArtifact:
        """A local artifact with its recorded sha256 and size."""
        path = self.path(filename)
        return PackedArtifact(filename, path, self.sha256(filename), path.stat().st_size)

    def add(self, artifact: PackedArtifact) -> None:
        """Keep a copy of an artifact this worker built."""
        self._write_digest(artifact.filename, artifact.sha256)
        _atomic_copy(artifact.path, self.path(artifact.filename))

    def _write_digest(self, filename: str, sha256: str) -> None:
        _atomic_text(self.directory / f".{filename}.sha256", sha256 + "\n")


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


@contextmanager
def _locked(path: Path):
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

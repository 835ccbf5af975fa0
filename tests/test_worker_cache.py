"""The worker-local artifact cache: one download per artifact, every download checked."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from distbuild.worker.artifacts import describe
from distbuild.worker.cache import DirectoryArtifactStore, LocalArtifactCache
from distbuild.worker.errors import CorruptArtifact, MissingArtifact


class CountingStore(DirectoryArtifactStore):
    """A directory store that counts downloads and can lie about a sha256."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.calls = 0
        self.lock = threading.Lock()

    def download(self, filename: str, dest: Path) -> str | None:
        with self.lock:
            self.calls += 1
        return super().download(filename, dest)


@pytest.fixture
def store(tmp_path):
    store = CountingStore(tmp_path / "store")
    (tmp_path / "a").write_bytes(b"artifact bytes")
    store.upload([describe(tmp_path / "a", "K.chunk.x-bins")])
    return store


def test_each_artifact_is_downloaded_once_even_by_concurrent_steps(tmp_path, store):
    cache = LocalArtifactCache(tmp_path / "local", store)
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(cache.fetch("K.chunk.x-bins")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.calls == 1
    assert {p.read_bytes() for p in paths} == {b"artifact bytes"}
    cache.fetch("K.chunk.x-bins")
    assert store.calls == 1


def test_download_not_matching_the_declared_sha256_is_refused(tmp_path, store):
    (store.directory / "K.chunk.x-bins.sha256").write_text("0" * 64)
    cache = LocalArtifactCache(tmp_path / "local", store)
    with pytest.raises(CorruptArtifact, match="the artifact cache says 0000"):
        cache.fetch("K.chunk.x-bins")
    assert not cache.path("K.chunk.x-bins").exists()
    assert [p.name for p in cache.directory.iterdir() if not p.name.endswith(".lock")] == []


def test_download_not_matching_the_referrers_sha256_is_refused(tmp_path, store):
    cache = LocalArtifactCache(tmp_path / "local", store)
    with pytest.raises(CorruptArtifact, match="its referrer says ffff"):
        cache.fetch("K.chunk.x-bins", sha256="f" * 64)
    right = hashlib.sha256(b"artifact bytes").hexdigest()
    assert cache.fetch("K.chunk.x-bins", sha256=right).read_bytes() == b"artifact bytes"


def test_missing_artifact_names_it(tmp_path, store):
    cache = LocalArtifactCache(tmp_path / "local", store)
    with pytest.raises(MissingArtifact, match=r"K\.chunk\.absent is not in the artifact cache"):
        cache.fetch("K.chunk.absent")


def test_without_a_source_only_local_artifacts_are_found(tmp_path):
    cache = LocalArtifactCache(tmp_path / "local")
    with pytest.raises(MissingArtifact, match="no artifact cache to fetch it from"):
        cache.fetch("K.chunk.x")


def test_trim_removes_least_recently_used_and_keeps_recent(tmp_path, store):
    for name in ("K.chunk.old", "K.chunk.mid", "K.chunk.new"):
        (tmp_path / name).write_bytes(b"x" * 1000)
        store.upload([describe(tmp_path / name, name)])
    cache = LocalArtifactCache(tmp_path / "local", store)
    for age, name in ((3000, "K.chunk.old"), (2000, "K.chunk.mid"), (1000, "K.chunk.new")):
        path = cache.fetch(name)
        os.utime(path, (time.time() - age, time.time() - age))
    cache.fetch("K.chunk.x-bins")  # just used: kept whatever the limit
    assert cache.trim(1500, min_age=600) == ["K.chunk.old", "K.chunk.mid"]
    assert sorted(p.name for p in cache.directory.iterdir()
                  if not p.name.startswith(".") and p.name != "index") == [
        "K.chunk.new", "K.chunk.x-bins"]
    calls = store.calls
    assert cache.fetch("K.chunk.old").read_bytes() == b"x" * 1000  # fetched again, checked
    assert store.calls == calls + 1

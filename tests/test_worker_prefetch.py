"""A worker's prefetch against a real trove process: what a failed, cut or joined fetch leaves.

The trove runs as its own process on 127.0.0.1; a loopback proxy between
the prefetch and the trove cuts or slows the download. The step's side is
the worker's own cache code (`LocalArtifactCache.unpacked`), as a job-run
calls it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from distbuild import tokens
from distbuild.trove.client import CacheClient
from distbuild.worker import artifacts
from distbuild.worker.cache import LocalArtifactCache, empty_sha256
from distbuild.worker.prefetch import Prefetcher
from distbuild.worker.remote import TroveArtifactSource
from tests.tcp_proxy import CuttingProxy
from tests.trove_process import TroveProcess

pytestmark = pytest.mark.slow

KEY = "ab" * 32
FILENAME = f"{KEY}.chunk.big-misc"


@pytest.fixture(scope="module")
def trove(tmp_path_factory):
    trove = TroveProcess(tmp_path_factory.mktemp("trove")).start()
    yield trove
    trove.stop()


@pytest.fixture(scope="module")
def artifact(trove, tmp_path_factory) -> artifacts.PackedArtifact:
    """A 4 MB chunk artifact (incompressible files) stored in the trove."""
    root = tmp_path_factory.mktemp("inst")
    (root / "usr/share/big").mkdir(parents=True)
    for i in range(4):
        (root / f"usr/share/big/f{i}").write_bytes(os.urandom(1 << 20))
    (root / "usr/share/big/note").write_text("the original\n")
    packed = artifacts.pack(root, ["usr", "usr/share", "usr/share/big", *(
        f"usr/share/big/{p.name}" for p in (root / "usr/share/big").iterdir())],
        root.parent / FILENAME, FILENAME)
    CacheClient(trove.cache_url).upload_source(
        KEY, {FILENAME: packed.path}, tokens.issue(trove.secret, KEY))
    return packed


def hint(packed: artifacts.PackedArtifact, sha256: str | None = None) -> dict:
    return {packed.filename: {"sha256": sha256 or packed.sha256, "size": packed.size}}


def step_cache(directory: Path, trove) -> LocalArtifactCache:
    """The cache as a job-run's step makes it: straight to the trove."""
    return LocalArtifactCache(directory, TroveArtifactSource(CacheClient(trove.cache_url)))


def wait_idle(prefetcher: Prefetcher, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while prefetcher._queued:
        assert time.monotonic() < deadline, "the prefetch did not end"
        time.sleep(0.02)


def staged_note(cache: LocalArtifactCache) -> str:
    """What a step staging the artifact reads from it (in a thread: images mount per thread)."""
    out: list[str] = []

    def read() -> None:
        out.append((cache.unpacked(FILENAME) / "usr/share/big/note").read_text())

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    return out[0]


def leftovers(directory: Path) -> list[str]:
    """Anything of the artifact under a name a step could find."""
    found = [p.name for p in directory.iterdir() if p.name.startswith(KEY)]
    unpacked = directory / ".unpacked"
    if unpacked.is_dir():
        found += [p.name for p in unpacked.iterdir() if p.name.startswith(KEY)]
    return found


def test_a_prefetch_cut_short_leaves_nothing_a_step_could_stage(trove, artifact, tmp_path):
    proxy = CuttingProxy(int(trove.cache_url.rsplit(":", 1)[1].strip("/")),
                         downstream_cut_after=1 << 20)
    lines: list[str] = []
    prefetcher = Prefetcher(tmp_path / "artifacts", None, lines.append)
    try:
        prefetcher.add(f"http://127.0.0.1:{proxy.port}/", hint(artifact))
        wait_idle(prefetcher)
    finally:
        prefetcher.stop()
        proxy.close()
    assert proxy.cuts >= 1
    assert prefetcher.fetched == 0
    assert any(f"prefetch of {FILENAME} failed" in line for line in lines), lines
    assert leftovers(tmp_path / "artifacts") == []
    # The step fetches it whole itself and stages what the trove holds.
    cache = step_cache(tmp_path / "artifacts", trove)
    assert staged_note(cache) == "the original\n"
    assert cache.downloads == 1


def test_a_prefetch_whose_download_does_not_match_its_sha256_leaves_nothing(
        trove, artifact, tmp_path):
    lines: list[str] = []
    prefetcher = Prefetcher(tmp_path / "artifacts", None, lines.append)
    prefetcher.add(trove.cache_url, hint(artifact, sha256="0" * 64))
    wait_idle(prefetcher)
    prefetcher.stop()
    assert prefetcher.fetched == 0
    assert any("sha256" in line and "failed" in line for line in lines), lines
    assert leftovers(tmp_path / "artifacts") == []
    assert staged_note(step_cache(tmp_path / "artifacts", trove)) == "the original\n"


def test_a_step_needing_an_artifact_being_prefetched_waits_for_that_fetch(
        trove, artifact, tmp_path):
    # 4 MB at 4 MB/s: the step asks while the prefetch is mid-download.
    proxy = CuttingProxy(int(trove.cache_url.rsplit(":", 1)[1].strip("/")),
                         downstream_rate=4 << 20)
    (tmp_path / "artifacts").mkdir()
    prefetcher = Prefetcher(tmp_path / "artifacts", None, lambda line: None)
    try:
        prefetcher.add(f"http://127.0.0.1:{proxy.port}/", hint(artifact))
        deadline = time.monotonic() + 10
        while not any(FILENAME in p.name and p.name != FILENAME and not p.name.endswith(".lock")
                      for p in (tmp_path / "artifacts").iterdir()):
            assert time.monotonic() < deadline, "the prefetch's download did not start"
            time.sleep(0.01)
        cache = step_cache(tmp_path / "artifacts", trove)
        assert staged_note(cache) == "the original\n"
        wait_idle(prefetcher)
    finally:
        prefetcher.stop()
        proxy.close()
    assert cache.downloads == 0  # the step did not fetch it a second time
    assert prefetcher.fetched == 1


def test_a_prefetch_that_would_pass_the_cache_limit_is_skipped(trove, artifact, tmp_path):
    lines: list[str] = []
    # 4 MB of tarball needs 20 MB of room with its image; 10 MB is the limit.
    prefetcher = Prefetcher(tmp_path / "artifacts", 10, lines.append)
    prefetcher.add(trove.cache_url, hint(artifact))
    wait_idle(prefetcher)
    prefetcher.stop()
    assert prefetcher.skipped == 1 and prefetcher.fetched == 0
    assert leftovers(tmp_path / "artifacts") == []
    assert any("skipped: the local cache holds 0 MiB of its 10 MiB" in line for line in lines)
    # With room, the same hint is followed.
    roomy = Prefetcher(tmp_path / "artifacts", 100, lines.append)
    roomy.add(trove.cache_url, hint(artifact))
    wait_idle(roomy)
    roomy.stop()
    assert roomy.fetched == 1
    assert LocalArtifactCache(tmp_path / "artifacts").is_unpacked(FILENAME)


def test_hints_that_are_not_chunk_artifacts_are_ignored(tmp_path):
    lines: list[str] = []
    prefetcher = Prefetcher(tmp_path / "artifacts", None, lines.append)
    prefetcher.add("http://127.0.0.1:1/", {
        "../../etc/passwd": {"sha256": "0" * 64, "size": 1},
        f"{KEY}.stratum.s": {"sha256": "0" * 64, "size": 1},
        f"{KEY}.chunk.x": {"sha256": "short", "size": 1},
        f"{KEY}.chunk.y": "not an object"})
    assert prefetcher._queued == set()
    assert len(lines) == 4 and all("ignoring" in line for line in lines)


def test_an_empty_artifact_hinted_is_known_empty_without_a_download(tmp_path):
    name = f"{'cd' * 32}.chunk.x-doc"
    prefetcher = Prefetcher(tmp_path / "artifacts", None, lambda line: None)
    # Nothing listens there: an empty artifact is never fetched.
    prefetcher.add("http://127.0.0.1:1/", {name: {"sha256": empty_sha256(), "size": 45}})
    wait_idle(prefetcher)
    prefetcher.stop()
    # A step's cache, with no source to ask, knows it holds nothing.
    assert LocalArtifactCache(tmp_path / "artifacts").known_empty(name)
    assert prefetcher.fetched == 0

"""Fixtures for deployment tests: a real trove on 127.0.0.1 holding system tarballs."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from distbuild import tokens
from distbuild.definitions import Aliases, Definitions, DirectorySource, OfflineResolver
from distbuild.deploy.systems import DefinitionsSystems
from distbuild.trove.client import CacheClient
from distbuild.worker.artifacts import SYSTEM_META_FORMAT
from tests.trove_process import TroveProcess


@dataclass
class ArtifactCache:
    """A real trove process on 127.0.0.1; systems are put in as a worker uploads them."""

    url: str
    trove: TroveProcess

    def put(self, filename: str, path: Path) -> None:
        """Upload artifact `path` as `filename`, with a token for its key."""
        key = filename[:64]
        CacheClient(self.url).upload_source(key, {filename: path},
                                            tokens.issue(self.trove.secret, key))


@pytest.fixture
def artifact_cache(tmp_path: Path) -> Iterator[ArtifactCache]:
    trove = TroveProcess(tmp_path / "trove").start()
    try:
        yield ArtifactCache(trove.cache_url, trove)
    finally:
        trove.stop()


def engine_systems(definitions: Path) -> DefinitionsSystems:
    """Systems with the cache keys an --offline build of `definitions` gives them."""
    return DefinitionsSystems(Definitions(DirectorySource(definitions)), OfflineResolver(),
                              Aliases.from_config(None, None))


# What the example system's strata install (see morphs/strata/*), assembled
# here until a worker can build the real system.
EXAMPLE_FILES: dict[str, tuple[int, bytes]] = {
    "etc/motd": (0o644, b"Welcome to the example system.\n"),
    "etc/os-release": (0o644, b"NAME=example\n"),
    "usr/bin/hello": (0o755, b"#!/bin/sh\necho hello\n"),
    "usr/bin/greeting-tool": (0o4755, b"#!/bin/sh\necho greetings\n"),
    "usr/lib/libgreet.so.1": (0o755, b"\x7fELF" + bytes(5000)),
}


def system_tarball(dest: Path, files: dict[str, tuple[int, bytes]] | None = None) -> Path:
    """Write a gzip tarball of a root filesystem, owned by root, as a system artifact is."""
    files = EXAMPLE_FILES if files is None else files
    with tarfile.open(dest, "w:gz") as tar:
        dirs = sorted({str(Path(p).parent) for p in files} | {"usr", "var", "tmp"})
        for d in ["."] + [p for p in dirs if p != "."]:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        for path, (mode, data) in files.items():
            info = tarfile.TarInfo(path)
            info.mode, info.size = mode, len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("usr/lib/libgreet.so")
        link.type, link.linkname = tarfile.SYMTYPE, "libgreet.so.1"
        tar.addfile(link)
    return dest


def put_system(cache: ArtifactCache, definitions: Path, morph: str,
               files: dict[str, tuple[int, bytes]] | None = None) -> str:
    """Put system `morph`'s artifact in the cache under the key the definitions give it.

    The tarball is assembled here, standing in for what a worker builds.
    """
    system = engine_systems(definitions).system(morph)
    filename = system.filename
    # The metadata a worker writes into every system it assembles.
    meta = json.dumps({"format": SYSTEM_META_FORMAT, "system": system.name}).encode()
    files = {**(EXAMPLE_FILES if files is None else files),
             f"baserock/{system.name}.meta": (0o644, meta)}
    with tempfile.TemporaryDirectory() as scratch:
        tarball = system_tarball(Path(scratch) / filename, files)
        cache.put(filename, tarball)
    return filename


def load_cluster(path: Path):
    """The cluster at `path` through the definitions engine.

    The definitions are the nearest folder above with a VERSION file; a
    cluster written alone in a test's folder gets one beside it.
    """
    root = next((p for p in path.parents if (p / "VERSION").is_file()), None)
    if root is None:
        root = path.parent
        (root / "VERSION").write_text("version: 6\n")  # v6 needs no DEFAULTS
    return Definitions(DirectorySource(root)).cluster(str(path.relative_to(root)))

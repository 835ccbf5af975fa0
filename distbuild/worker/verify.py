"""Building a step again to check that it reproduces, without publishing anything.

The rebuilt artifacts stay on this worker: they are neither uploaded nor put
in its local artifact cache, so the stored ones are never replaced. For each
artifact whose sha256 differs from the stored one's, both tarballs are read
and every member that differs is listed (path, and the size, sha256, mode and
type of each side), for the controller to report.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distbuild.worker.artifacts import ArtifactInfo, PackedArtifact
from distbuild.worker.cache import LocalArtifactCache
from distbuild.worker.errors import CorruptArtifact

Entry = dict[str, Any]


def manifest(path: Path, filename: str) -> dict[str, Entry]:
    """Every member of an artifact tarball: path -> {type, size, sha256, mode}."""
    out: dict[str, Entry] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                entry: Entry = {"type": _kind(member), "size": member.size,
                                "mode": f"{member.mode:04o}"}
                if member.isreg():
                    f = tar.extractfile(member)
                    entry["sha256"] = hashlib.file_digest(f, "sha256").hexdigest() if f else ""
                elif member.issym() or member.islnk():
                    entry["sha256"] = hashlib.sha256(member.linkname.encode()).hexdigest()
                    entry["target"] = member.linkname
                else:
                    entry["sha256"] = ""
                out[member.name] = entry
    except (tarfile.TarError, EOFError) as e:
        raise CorruptArtifact(f"cannot read artifact: {e}", filename) from None
    return out


def _kind(member: tarfile.TarInfo) -> str:
    return ("file" if member.isreg() else "dir" if member.isdir() else
            "symlink" if member.issym() else "hardlink" if member.islnk() else "device")


def differences(stored: Mapping[str, Entry], rebuilt: Mapping[str, Entry]) -> list[Entry]:
    """Members that differ between two manifests, by path: {path, stored, rebuilt}."""
    out = []
    for path in sorted(set(stored) | set(rebuilt)):
        a, b = stored.get(path), rebuilt.get(path)
        if a != b:
            out.append({"path": path, "stored": a, "rebuilt": b})
    return out


def compare(rebuilt: list[PackedArtifact], stored: Mapping[str, ArtifactInfo | None],
            cache: LocalArtifactCache) -> dict[str, list[Entry]]:
    """Artifact filename -> differing members, for each rebuilt artifact unlike the stored one.

    `stored` holds the trove's record of each artifact (None: it has none, and
    every member counts as new).
    """
    out: dict[str, list[Entry]] = {}
    for artifact in rebuilt:
        info = stored.get(artifact.filename)
        if info is not None and info.sha256 == artifact.sha256:
            continue
        theirs = manifest(cache.fetch(artifact.filename, info.sha256), artifact.filename) \
            if info is not None else {}
        out[artifact.filename] = differences(theirs, manifest(artifact.path, artifact.filename))
    return out

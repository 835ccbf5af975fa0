"""Artifact formats: packing chunk artifacts, stratum metadata, system root filesystems.

Chunk artifact (`KEY.chunk.NAME`): a gzip-compressed POSIX (pax) tarball of
the files one split rule took from the chunk's install directory. Member
names are relative to the root (`usr/bin/hello`, no leading `./` or `/`),
parent directories come before their contents, entries are sorted, owner
and group are 0 with no names, and symlinks and hard links are kept. The
bytes depend only on the files' names, contents and kinds: every member's
time is ARTIFACT_MTIME, group and other write bits of plain files and
directories are cleared (so a worker's umask does not show; device nodes,
setuid, setgid and sticky entries and modes such as 0600 are kept), and
neither the gzip header nor pax headers carry a time or a file name. The same
step built on two workers gives byte-identical artifacts. An artifact whose
rule matched nothing is an empty tarball.

Stratum artifact (`KEY.stratum.NAME`): JSON, see `stratum_document`.

System artifact (`KEY.system.NAME-rootfs`): a tarball in the chunk format of
the assembled root filesystem; it holds `baserock/NAME.meta` (JSON: what
went in, with cache keys and sha256s).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from distbuild.files import sha256_file
from distbuild.worker.errors import CorruptArtifact, StepError

# Every member's mtime: fixed, so artifacts do not depend on when a worker built them.
ARTIFACT_MTIME = 0
STRATUM_FORMAT = "distbuild-stratum/1"
SYSTEM_META_FORMAT = "distbuild-system/1"


@dataclass(frozen=True)
class ArtifactInfo:
    """An artifact's identity: its cache file name, sha256 and size."""

    filename: str
    sha256: str
    size: int


@dataclass(frozen=True)
class PackedArtifact:
    """An artifact file ready for the cache."""

    filename: str
    path: Path
    sha256: str
    size: int


def artifact_filename(cache_key: str, kind: str, name: str) -> str:
    """The cache's name for an artifact: `KEY.KIND.NAME`."""
    return f"{cache_key}.{kind}.{name}"


@lru_cache(maxsize=4096)
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def first_match(name: str, rules: Iterable[Any]) -> str | None:
    """The artifact of the first rule with a pattern matching at the start of `name`."""
    for rule in rules:
        if any(_pattern(p).match(name) for p in rule.include):
            return rule.artifact
    return None


def split_tree(root: Path, rules: Sequence[Any]) -> dict[str, list[str]]:
    """Assign every file under `root` to an artifact by `rules`; empty directories too.

    Returns artifact name -> relative paths (every rule's artifact is present).
    Raises StepError for a file no rule takes.
    """
    out: dict[str, list[str]] = {rule.artifact: [] for rule in rules}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        entries = list(filenames)
        for d in list(dirnames):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                entries.append(d)
                dirnames.remove(d)
            elif not os.listdir(full):
                entries.append(d + "/")
        for entry in entries:
            rel = rel_dir + entry
            target = first_match(rel, rules)
            if target is None:
                raise StepError(f"installed file '{rel}' matches no split rule")
            out[target].append(rel.rstrip("/"))
    return {name: sorted(paths) for name, paths in out.items()}


def pack(root: Path, paths: Iterable[str], dest: Path, filename: str) -> PackedArtifact:
    """Write the tarball of `paths` (relative to `root`) with their parent directories."""
    names: set[str] = set()
    for rel in paths:
        parts = rel.split("/")
        names.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    with dest.open("wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb",
                                                compresslevel=6, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(names):
            info = normalised(tar.gettarinfo(str(root / name), arcname=name))
            if info.isreg():
                with (root / name).open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return describe(dest, filename)


def normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """`info` with nothing of the worker that packed it: owner, time, umask."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = ARTIFACT_MTIME
    # Only plain files and directories: a device node's or a setuid, setgid or
    # sticky entry's mode is declared, not an accident of the umask.
    if (info.isreg() or info.isdir()) and not info.mode & 0o7000:
        info.mode &= ~0o022
    return info


def describe(path: Path, filename: str) -> PackedArtifact:
    """The sha256 and size of an artifact file."""
    digest, size = sha256_file(path)
    return PackedArtifact(filename, path, digest, size)


def extract(artifact: Path, dest: Path, filename: str) -> list[str]:
    """Unpack a chunk or system tarball into `dest`; returns the member names.

    Members that would land outside `dest` (absolute names, `..`, writing
    through a symlink that leaves it) are refused.
    """
    try:
        with tarfile.open(artifact, "r:gz") as tar:
            members = tar.getmembers()
            tar.extractall(dest, members=members, filter=_keep_modes_filter)
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, OSError) and not isinstance(e, tarfile.TarError) and e.errno:
            raise
        raise CorruptArtifact(f"cannot unpack artifact: {e}", filename) from None
    return [m.name for m in members]


def _keep_modes_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    # tar_filter refuses paths leaving dest; its mode changes (dropping
    # setuid bits) would break a root filesystem, so keep the original.
    tarfile.tar_filter(member, dest)
    return member


def stratum_document(stratum: str, artifact: str, cache_key: str,
                     chunks: Sequence[ArtifactInfo | PackedArtifact]) -> dict[str, Any]:
    """A stratum artifact's content: the chunk artifacts it holds, in build order."""
    return {
        "format": STRATUM_FORMAT,
        "stratum": stratum,
        "artifact": artifact,
        "cache_key": cache_key,
        "chunks": [{"filename": c.filename, "sha256": c.sha256, "size": c.size}
                   for c in chunks],
    }


def read_stratum(path: Path, filename: str) -> dict[str, Any]:
    """Read and check a stratum artifact."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CorruptArtifact(f"stratum artifact is not JSON: {e}", filename) from None
    if not isinstance(doc, dict) or doc.get("format") != STRATUM_FORMAT:
        raise CorruptArtifact(f"not a {STRATUM_FORMAT} document", filename)
    return doc


def write_json(path: Path, doc: Any) -> None:
    """Write `doc` as stable, human-readable JSON."""
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


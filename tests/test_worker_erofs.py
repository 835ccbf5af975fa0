"""An artifact's EROFS image shows exactly what unpacking its tarball makes."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
from pathlib import Path

import pytest

from distbuild import mounts
from distbuild.worker import erofs, untar
from distbuild.worker.cache import images_work
from distbuild.worker.errors import CorruptArtifact

pytestmark = pytest.mark.skipif(not images_work(),
                                reason="needs root and a kernel that mounts EROFS files")


def _add(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
         mode: int = 0o644, **extra) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = kind, mode, len(data)
    info.mtime = extra.pop("mtime", 1_500_000_000)
    for key, value in extra.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def tricky_tarball(path: Path) -> None:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "usr", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "usr/bin", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "usr/bin/tool", data=b"#!/bin/sh\necho tool\n", mode=0o4755)
        _add(tar, "usr/bin/tool-hard", tarfile.LNKTYPE, linkname="usr/bin/tool")
        _add(tar, "usr/bin/sh", tarfile.SYMTYPE, linkname="../../bin/busybox", mode=0o777)
        _add(tar, "usr/lib/big", data=os.urandom(3 * 4096 + 17))  # parent made implicitly
        _add(tar, "usr/lib/empty-file")
        _add(tar, "usr/lib/owned", data=b"x", uid=1000, gid=100)
        _add(tar, "usr/lib/precise", data=b"t", mtime=1_600_000_000.123456789)
        _add(tar, "usr/lib/" + "long-name-" * 20, data=b"long")
        _add(tar, "usr/lib/ünïcode", data=b"u")
        _add(tar, "usr/share/empty", tarfile.DIRTYPE, mode=0o700)
        _add(tar, "usr/share/fifo", tarfile.FIFOTYPE, mode=0o600)
        _add(tar, "dev/console", tarfile.CHRTYPE, mode=0o600, devmajor=5, devminor=1)
        _add(tar, "dev/big-minor", tarfile.BLKTYPE, mode=0o600, devmajor=259, devminor=300)
        # Enough names for a directory of several blocks, looked up by binary search.
        for i in range(700):
            _add(tar, f"usr/many/{'n' * (i % 37)}{i}", data=str(i).encode())
        _add(tar, "usr/lib/replaced", data=b"first")
        _add(tar, "usr/lib/replaced", data=b"second")


def _snapshot(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            kind = stat.S_IFMT(st.st_mode)
            content: object = None
            if kind == stat.S_IFREG:
                content = path.read_bytes()
                if st.st_nlink > 1:
                    content = (content, inodes.setdefault(st.st_ino, rel))
            elif kind == stat.S_IFLNK:
                content = os.readlink(path)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                content = (os.major(st.st_rdev), os.minor(st.st_rdev))
            # Unpacking gives symlinks (and directories being filled) the time of unpacking.
            mtime = st.st_mtime_ns if kind not in (stat.S_IFDIR, stat.S_IFLNK) else None
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, mtime, content)
    return out


def _in_namespace(function):
    result: list = []

    def run() -> None:
        mounts.private_namespace()
        result.append(function())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0]


def test_an_image_shows_what_unpacking_makes(tmp_path):
    tarball = tmp_path / "a.tgz"
    tricky_tarball(tarball)
    untar.extract(tarball, tmp_path / "tree", "a")
    erofs.build(tarball, tmp_path / "a.erofs", "a")
    (tmp_path / "mnt").mkdir()

    def look() -> tuple[dict, list[str], bytes]:
        mounts.mount_image(tmp_path / "mnt", tmp_path / "a.erofs")
        many = sorted(os.listdir(tmp_path / "mnt/usr/many"))
        # Each name found by lookup, not only listed.
        found = [name for name in many if (tmp_path / "mnt/usr/many" / name).is_file()]
        try:
            (tmp_path / "mnt/usr/lib/new").write_text("x")
        except OSError as e:
            written = str(e).encode()
        return _snapshot(tmp_path / "mnt"), found, written

    image, found, written = _in_namespace(look)
    assert image == _snapshot(tmp_path / "tree")
    assert len(found) == 700
    assert b"Read-only" in written
    assert image["usr/bin/tool"][0] == stat.S_IFREG | 0o4755
    assert image["usr/lib/replaced"][-1] == b"second"


def test_a_tarball_leaving_its_root_makes_no_image(tmp_path):
    with tarfile.open(tmp_path / "bad.tgz", "w:gz") as tar:
        _add(tar, "../escape", data=b"x")
    with pytest.raises(CorruptArtifact, match="would land outside"):
        erofs.build(tmp_path / "bad.tgz", tmp_path / "bad.erofs", "bad.tgz")
    assert not (tmp_path / "bad.erofs").exists()

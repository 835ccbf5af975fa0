"""Artifacts on a worker: a local cache in front of the shared one.

`LocalArtifactCache` keeps every artifact the worker has downloaded or
built, so each is downloaded at most once per worker, and checks each
download against the sha256 its source declares (or the caller expects)
before anyone can use it. Concurrent steps wanting the same artifact wait
for one download (a lock file per artifact). Checked sha256s are appended
to one index file (`index`: `SHA256 FILENAME` lines), which costs one
write per artifact instead of a file and a rename each.

Chunk artifacts are also kept unpacked, once, in `.unpacked/FILENAME/`, the
first time a step stages them (or when this worker built them): staging
layers those trees (see distbuild.worker.staging) instead of unpacking
tarballs every step. Where the worker can mount, a tree is an EROFS image
(`.unpacked/FILENAME.erofs`, see distbuild.worker.erofs) mounted on the
empty directory in the thread that stages it: one file written instead of
one per member, which is what first-use staging cost. Elsewhere it is a
real tree. Either is never written to after it is made. `trim` counts a
tree's (or image's) size with its tarball's and deletes them together,
least recently used first (an image's time is its last use); trees a
running step has staged are never deleted under it. After a reboot the
trees are dropped and made again (they are not fsynced: a crash of the
machine could leave one cut short; the tarballs are the checked originals).

`ArtifactSource` is what the local cache downloads from: the trove's cache
client, or `DirectoryArtifactStore` (a plain directory, used by tests and
by `distbuild build-step` without a trove).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from distbuild import mounts
from distbuild.files import locked
from distbuild.worker import activity, erofs, untar
from distbuild.worker.artifacts import ArtifactInfo, PackedArtifact, describe, pack
from distbuild.worker.errors import CorruptArtifact, MissingArtifact

UNPACKED = ".unpacked"
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

# Unpacked trees a step in this process has staged (a worker runs all its
# steps in one process): trim() leaves them alone, however old.
_in_use: Counter[str] = Counter()
_in_use_lock = threading.Lock()



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

    def __init__(self, directory: Path, source: ArtifactSource | None = None,
                 images: bool | None = None) -> None:
        self.directory = directory
        self.source = source
        self.downloads = 0
        self.downloaded_bytes = 0  # reported to the controller with each built step
        directory.mkdir(parents=True, exist_ok=True)
        self._index = directory / "index"
        self._shared = _shared_index(self._index)
        self._digests = self._shared.digests
        self._lock = self._shared.lock
        self._read_index()
        self.unpacked_dir = directory / UNPACKED
        self._sizes = self.unpacked_dir / ".sizes"
        self._images = images
        self._dev: int | None = None
        self._check_boot()
        if self.unpacked_dir.is_dir():  # made by an older worker: flag it now
            _spread_subdirectories(self.unpacked_dir)

    def _check_boot(self) -> None:
        """Drop the unpacked trees if the machine rebooted since they were made."""
        if not self.unpacked_dir.exists():
            return
        boot = _boot_id()
        stamp = self.unpacked_dir / ".boot"
        with locked(self.directory / ".unpacked.lock"):
            try:
                if stamp.read_text() == boot:
                    return
            except OSError:
                pass
            old = self.directory / f".unpacked-old-{os.getpid()}-{time.time_ns()}"
            try:
                os.rename(self.unpacked_dir, old)
            except FileNotFoundError:
                return
            threading.Thread(target=shutil.rmtree, args=(old, False, _force_remove),
                             daemon=True).start()

    def _make_unpacked_dir(self) -> None:
        if self.unpacked_dir.is_dir():
            return
        with locked(self.directory / ".unpacked.lock"):
            if not self.unpacked_dir.is_dir():
                tmp = self.directory / f".unpacked-new-{os.getpid()}-{threading.get_ident()}"
                tmp.mkdir()
                _spread_subdirectories(tmp)
                (tmp / ".boot").write_text(_boot_id())
                os.rename(tmp, self.unpacked_dir)

    def unpacked(self, filename: str, sha256: str | None = None) -> Path:
        """A directory holding artifact `filename` unpacked, made on first use.

        Where it is kept as an image, the directory shows it only in the
        calling thread's mount namespace (see distbuild.mounts), mounted
        here. Nobody may write into it: stage it read-only or copy-on-write.
        """
        tree = self.prepare(filename, sha256)
        image = self._image(filename)
        if image.exists() and os.stat(tree).st_dev == self._unpacked_dev():
            mounts.private_namespace()
            mounts.mount_image(tree, image)
        return tree

    def prepare(self, filename: str, sha256: str | None = None,
                background: bool = False) -> Path:
        """Make `filename`'s tree (or image) if there is none yet, mounting nothing.

        `background`: for a prefetch, which must not count as a step's staging
        (see distbuild.worker.activity).
        """
        if background:
            return self._prepare(filename, sha256)
        with activity.staging():
            return self._prepare(filename, sha256)

    def _prepare(self, filename: str, sha256: str | None) -> Path:
        tree = self.unpacked_dir / filename
        if tree.is_dir():
            self._check_expected(filename, sha256)
            _touch(tree)
            _touch(self._image(filename))  # the tree's own time, once mounted, is the image's
            return tree
        local = self.fetch(filename, sha256)
        self._make_unpacked_dir()
        with locked(self.directory / f".{filename}.lock"):
            if not tree.is_dir():
                tmp = self.unpacked_dir / f".{filename}.{os.getpid()}.{threading.get_ident()}"
                shutil.rmtree(tmp, ignore_errors=True)
                try:
                    if self.images:
                        # The image first, at its final name: the directory's
                        # appearing says both are complete.
                        tmp.mkdir()
                        image = tmp.with_name(tmp.name + ".erofs")
                        image.unlink(missing_ok=True)
                        size = erofs.build(local, image, filename)
                        os.replace(image, self._image(filename))
                    else:
                        unpacker = untar.Unpacker(tmp)
                        unpacker.add(local, filename)
                        unpacker.finish()
                        size = unpacker.disk_bytes
                    self._record_size(filename, size)
                    os.rename(tmp, tree)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        return tree

    @property
    def images(self) -> bool:
        """Whether artifacts are kept as EROFS images (mounted to stage) rather than trees."""
        if self._images is None:
            self._images = mounts.available() and images_work()
        return self._images

    def _image(self, filename: str) -> Path:
        return self.unpacked_dir / f"{filename}.erofs"

    def _unpacked_dev(self) -> int:
        if self._dev is None:
            self._dev = os.stat(self.unpacked_dir).st_dev
        return self._dev

    def recorded_sha256(self, filename: str) -> str | None:
        """The sha256 this worker has recorded for `filename`, asking nobody; None: none."""
        return self._digests.get(filename)

    def known_empty(self, filename: str, sha256: str | None = None) -> bool:
        """Whether `filename` is an artifact holding nothing, known without downloading it.

        Most split artifacts of most chunks are empty (no docs, no locale
        files): staging them needs no download and no tree. The sha256 is
        the caller's, or the one recorded here, or the one the source
        recorded (asked once per source, then kept in the index).
        """
        if sha256 is None:
            sha256 = self._digests.get(filename)
        if sha256 is None and self.source is not None and not self.path(filename).exists():
            info = self.source.info(filename)
            if info is not None:
                self._write_digest(filename, info.sha256)
                sha256 = info.sha256
        return sha256 == empty_sha256()

    def remember_empty(self, filename: str, sha256: str) -> None:
        """Record that `filename`, not held here, has the sha256 of the empty artifact.

        A step staging it then needs no query (see `known_empty`); the sha256
        comes from a checked source (a prefetch hint, the controller's record
        of what the artifact cache confirmed).
        """
        self.remember_empties([(filename, sha256)])

    def remember_empties(self, items: Iterable[tuple[str, str]]) -> None:
        """`remember_empty` of each (filename, sha256), in one write to the index.

        Prefetch hints name a few artifacts of every step built elsewhere,
        most of them empty: a write each was most of what a hint cost.
        """
        empty = empty_sha256()
        self._write_digests([(f, s) for f, s in items
                             if s == empty and self._digests.get(f) != s])

    def is_unpacked(self, filename: str) -> bool:
        """Whether `filename` is already unpacked here."""
        return (self.unpacked_dir / filename).is_dir()

    @contextmanager
    def holding(self, trees: Iterable[Path]) -> Iterator[None]:
        """Keep `trees` (from `unpacked`) from being trimmed while the block runs."""
        names = [str(t) for t in trees]
        with _in_use_lock:
            _in_use.update(names)
        try:
            yield
        finally:
            with _in_use_lock:
                _in_use.subtract(names)
                for name in names:
                    if _in_use[name] <= 0:
                        del _in_use[name]

    def _record_size(self, filename: str, size: int) -> None:
        with self._lock, self._sizes.open("a") as sizes:
            fcntl.flock(sizes, fcntl.LOCK_EX)
            sizes.write(f"{size} {filename}\n")

    def _unpacked_sizes(self) -> dict[str, int]:
        try:
            text = self._sizes.read_text()
        except FileNotFoundError:
            return {}
        out = {}
        for line in text.splitlines():
            size, _, name = line.partition(" ")
            if size.isdigit() and name:
                out[name] = int(size)
        return out

    def path(self, filename: str) -> Path:
        """Where `filename` is (or would be) kept locally."""
        return self.directory / filename

    def fetch(self, filename: str, sha256: str | None = None) -> Path:
        """The local path of a verified copy of `filename`, downloading it if needed."""
        local = self.path(filename)
        if local.exists():
            self._check_expected(filename, sha256)
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
        # A name only (unique: the artifact's lock is held): the source makes the file,
        # so no empty file is created here to be replaced and deleted a moment later.
        tmp = self.directory / f".{filename}.{os.getpid()}.{threading.get_ident()}.part"
        tmp.unlink(missing_ok=True)
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

    def _check_expected(self, filename: str, sha256: str | None) -> None:
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
        self.add_all([artifact])

    def add_all(self, artifacts: list[PackedArtifact]) -> None:
        """`add` each of a step's artifacts, with one write to the index."""
        self._write_digests([(a.filename, a.sha256) for a in artifacts])
        for artifact in artifacts:
            self._link_in(artifact)

    def _link_in(self, artifact: PackedArtifact) -> None:
        try:
            # A complete file linked in place appears whole: no rename needed.
            os.link(artifact.path, self.path(artifact.filename))
        except FileExistsError:
            _atomic_copy(artifact.path, self.path(artifact.filename))
        except OSError:
            _atomic_copy(artifact.path, self.path(artifact.filename))

    def trim(self, max_bytes: int, min_age: float = 600.0) -> list[str]:
        """Delete least recently used artifacts until the cache holds at most `max_bytes`.

        An artifact's size is its tarball's plus its unpacked tree's; both go
        together. Artifacts used in the last `min_age` seconds, and trees a
        running step has staged, are kept whatever the size, so that a step
        never loses an input under it. Returns the names deleted.
        """
        used, sizes = self._usage()
        total = sum(sizes.values())
        deleted = []
        now = time.time()
        with _in_use_lock:
            held = set(_in_use)
        for mtime, name in sorted((t, n) for n, t in used.items()):
            if total <= max_bytes:
                break
            tree = self.unpacked_dir / name
            if now - mtime < min_age or str(tree) in held:
                continue
            self._delete_tree(tree)
            (self.directory / name).unlink(missing_ok=True)
            total -= sizes[name]
            deleted.append(name)
        return deleted

    def usage(self) -> int:
        """Bytes the cache holds as `trim` counts them: tarballs plus trees or images."""
        return sum(self._usage()[1].values())

    def _usage(self) -> tuple[dict[str, float], dict[str, int]]:
        """Each artifact's last use and size (its tarball's plus its tree's)."""
        used: dict[str, float] = {}
        sizes: dict[str, int] = {}
        for entry in os.scandir(self.directory):
            if entry.name.startswith(".") or entry.name == "index" or not entry.is_file():
                continue
            st = entry.stat()
            used[entry.name], sizes[entry.name] = st.st_mtime, st.st_size
        trees = self._unpacked_sizes()
        for entry in _entries(self.unpacked_dir):
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            name = entry.name
            try:
                image_used = self._image(name).stat().st_mtime
            except FileNotFoundError:
                image_used = 0.0
            used[name] = max(used.get(name, 0.0), entry.stat().st_mtime, image_used)
            sizes[name] = sizes.get(name, 0) + trees.get(name, 0)
        return used, sizes

    def _delete_tree(self, tree: Path) -> None:
        trash = self.unpacked_dir / f".trash-{tree.name}-{time.time_ns()}"
        try:
            if os.stat(tree).st_dev != self._unpacked_dev():
                mounts.unmount(tree)  # mounted in this thread's namespace (others' detach)
            os.rename(tree, trash)
        except (FileNotFoundError, mounts.MountError):
            return
        self._image(tree.name).unlink(missing_ok=True)
        # Trees have read-only directories when their tarballs did.
        shutil.rmtree(trash, onerror=_force_remove)

    def _write_digest(self, filename: str, sha256: str) -> None:
        self._write_digests([(filename, sha256)])

    def _write_digests(self, pairs: list[tuple[str, str]]) -> None:
        if not pairs:
            return
        with self._lock, self._index.open("a") as index:
            fcntl.flock(index, fcntl.LOCK_EX)
            index.write("".join(f"{sha256} {filename}\n" for filename, sha256 in pairs))
            self._digests.update(pairs)

    def _read_index(self) -> None:
        """Take in the lines other processes (and caches) appended since the last read."""
        shared = self._shared
        with self._lock:
            try:
                with self._index.open("rb") as index:
                    st = os.fstat(index.fileno())
                    if (st.st_ino, st.st_dev) != shared.file or st.st_size < shared.offset:
                        shared.digests.clear()  # a new index: forget the old one's
                        shared.file, shared.offset = (st.st_ino, st.st_dev), 0
                    index.seek(shared.offset)
                    data = index.read()
            except FileNotFoundError:
                shared.digests.clear()
                shared.file, shared.offset = None, 0
                return
            # Only whole lines: a writer in another process may be half-way through one.
            data = data[:data.rfind(b"\n") + 1]
            shared.offset += len(data)
            for line in data.decode("utf-8", "replace").splitlines():
                digest, _, name = line.partition(" ")
                if len(digest) == 64 and name:
                    self._digests[name] = digest


class _SharedIndex:
    """One process's view of an index file, shared by every cache on its directory.

    A worker makes a cache for each job; reading the whole index (six lines
    more for every step it built) each time grew with the worker's age.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.digests: dict[str, str] = {}
        self.file: tuple[int, int] | None = None  # (inode, device) read so far
        self.offset = 0  # bytes of it read


_indexes: dict[str, _SharedIndex] = {}
_indexes_lock = threading.Lock()


def _shared_index(path: Path) -> _SharedIndex:
    with _indexes_lock:
        return _indexes.setdefault(os.path.abspath(path), _SharedIndex())


_empty: list[tuple[bytes, str]] = []


def _empty_artifact() -> tuple[bytes, str]:
    if not _empty:
        with tempfile.TemporaryDirectory(prefix="distbuild-empty-") as tmp:
            packed = pack(Path(tmp), [], Path(tmp) / "empty", "empty")
            _empty.append((packed.path.read_bytes(), packed.sha256))
    return _empty[0]


def empty_sha256() -> str:
    """The sha256 of a chunk artifact holding nothing, as this worker packs one."""
    return _empty_artifact()[1]


def write_empty(dest: Path, filename: str) -> PackedArtifact:
    """Write the artifact holding nothing (what `pack` writes for no paths) at `dest`."""
    data, sha256 = _empty_artifact()
    dest.write_bytes(data)
    return PackedArtifact(filename, dest, sha256, len(data))


_images_work: list[bool] = []


def images_work() -> bool:
    """Whether this process can mount an EROFS image from a file (tried once, in a thread)."""
    if not mounts.available():
        return False
    if not _images_work:
        if "erofs" not in _filesystems():
            _images_work.append(False)
            return False
        result: list[bool] = []

        def probe() -> None:
            with tempfile.TemporaryDirectory(prefix="distbuild-erofs-") as tmp:
                tarball, image = Path(tmp) / "empty.tgz", Path(tmp) / "empty.erofs"
                tarball.write_bytes(_empty_artifact()[0])
                erofs.build(tarball, image, "empty")
                (Path(tmp) / "mnt").mkdir()
                try:
                    mounts.private_namespace()
                    mounts.mount_image(Path(tmp) / "mnt", image)
                    mounts.unmount(Path(tmp) / "mnt")
                    result.append(True)
                except mounts.MountError:
                    result.append(False)

        thread = threading.Thread(target=probe, name="erofs-probe")
        thread.start()
        thread.join()
        _images_work.append(bool(result and result[0]))
    return _images_work[0]


def _filesystems() -> str:
    try:
        return Path("/proc/filesystems").read_text()
    except OSError:
        return ""


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


def _spread_subdirectories(path: Path) -> None:
    """Ask ext4 to place each tree made in `path` in a block group of its own choosing.

    ext4 without a journal will not reuse an inode freed in the last 30 s:
    creating a file scans past every such inode of its directory's group,
    one buffer lookup each. Where steps keep deleting build trees beside
    the cache, that made creating a file cost 300 µs instead of 40 (perf:
    `recently_deleted` under `ext4_create`). The "top directory" flag
    (chattr +T) makes the Orlov allocator spread `path`'s subdirectories
    to groups with free inodes, away from the churn. Elsewhere: no-op.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(4)))[0]
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", flags | _FS_TOPDIR_FL))
    except OSError:  # not ext2/3/4, or flags not settable here
        pass
    finally:
        os.close(fd)


def _entries(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


def _force_remove(function, path, excinfo) -> None:
    parent = os.path.dirname(path)
    try:
        if os.path.ismount(path):  # an image still mounted in this thread's namespace
            mounts.unmount(Path(path))
        os.chmod(parent, 0o700)
        if function is os.rmdir:
            # What was inside is gone or could not go: never walk it again.
            os.rmdir(path)
        elif os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            shutil.rmtree(path, onerror=_force_remove)
        else:
            os.unlink(path)
    except (OSError, mounts.MountError):
        pass


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



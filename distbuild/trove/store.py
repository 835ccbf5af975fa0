"""The content-addressed artifact store on the trove's disk.

One directory per source cache key holds every artifact of that source, its
build log and `meta.json` (each file's size and sha256). A source is uploaded
into a private temporary directory and renamed into place in one step, so it
becomes visible whole or not at all, and two uploads of the same key cannot
mix: the first rename wins, the second is discarded. Garbage collection
removes least recently used sources, skipping pinned ones. No Twisted here:
the HTTP layer feeds bytes in and calls `finish` or `abort`.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from distbuild import files
from distbuild.errors import TroveError
from distbuild.trove import names
from distbuild.trove.blobs import SHARE_MAX, SharedFiles
from distbuild.trove.splice import SocketSource

META = "meta.json"
LOG = "build.log"
MAX_MANIFEST_BYTES = 1 << 20
MAX_ARTIFACTS_PER_SOURCE = 1000
_PREALLOCATE_FROM = 1 << 20
# Small files an upload keeps in memory until it is sealed (see SharedFiles), at most.
_HELD_BYTES = 1 << 20


class UploadError(TroveError):
    """An upload was refused; `status` is the HTTP status that says why."""

    def __init__(self, what: str, where: str | None = None, status: int = 400):
        super().__init__(what, where)
        self.status = status


@dataclass(frozen=True)
class FileEntry:
    """One stored file of a source: its name, size in bytes and sha256 (hex)."""

    filename: str
    size: int
    sha256: str

    def to_json(self) -> dict:
        """The entry as it appears in a manifest and in meta.json."""
        return {"filename": self.filename, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """What an uploader declares it will send: artifacts in body order, then the log."""

    key: str
    artifacts: tuple[FileEntry, ...]
    log: FileEntry | None = None

    @property
    def files(self) -> tuple[FileEntry, ...]:
        """Every declared file in body order: artifacts, then the log."""
        return self.artifacts + ((self.log,) if self.log else ())

    @property
    def total_size(self) -> int:
        """Bytes of all declared files."""
        return sum(f.size for f in self.files)

    def to_json(self) -> dict:
        """The manifest as the uploader sends it (and meta.json records it)."""
        return {"artifacts": [a.to_json() for a in self.artifacts],
                "log": {"size": self.log.size, "sha256": self.log.sha256} if self.log else None}

    @classmethod
    def parse(cls, key: str, data: object) -> Manifest:
        """A manifest from its JSON form, every name and number validated (UploadError)."""
        where = f"manifest of {key}"
        if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
            raise UploadError("manifest must be an object with an 'artifacts' list", where)
        if not 0 < len(data["artifacts"]) <= MAX_ARTIFACTS_PER_SOURCE:
            raise UploadError(f"a source has 1 to {MAX_ARTIFACTS_PER_SOURCE} artifacts", where)
        artifacts = []
        for item in data["artifacts"]:
            entry = _entry(item, where, None)
            if names.key_of(entry.filename) != key:
                raise UploadError(f"artifact {entry.filename} does not belong to key {key}", where)
            artifacts.append(entry)
        if len({a.filename for a in artifacts}) != len(artifacts):
            raise UploadError("an artifact is listed twice", where)
        log = data.get("log")
        return cls(key, tuple(artifacts), _entry(log, where, LOG) if log is not None else None)


def _entry(item: object, where: str, filename: str | None) -> FileEntry:
    if not isinstance(item, dict):
        raise UploadError("each manifest entry must be an object", where)
    try:
        name = filename or names.check_filename(item.get("filename"))
    except TroveError as e:
        raise UploadError(e.what, e.where) from None
    size, digest = item.get("size"), item.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise UploadError(f"{name}: size must be a whole number of bytes", where)
    if not isinstance(digest, str) or len(digest) != 64 or not names.KEY_RE.fullmatch(digest):
        raise UploadError(f"{name}: sha256 must be 64 lower-case hex digits", where)
    return FileEntry(name, size, digest)


def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a file."""
    return files.sha256_file(path)[0]


@dataclass
class Pins:
    """Named sets of cache keys that garbage collection must keep, each with an expiry."""

    _pins: dict[str, tuple[frozenset[str], float]] = field(default_factory=dict)

    def set(self, name: str, keys: Iterable[str], ttl: float, now: float | None = None) -> None:
        """Pin `keys` under `name` for `ttl` seconds, replacing what `name` pinned before."""
        self._pins[name] = (frozenset(keys), (time.time() if now is None else now) + ttl)

    def remove(self, name: str) -> bool:
        """Drop the pin `name`; False if there was none."""
        return self._pins.pop(name, None) is not None

    def pinned(self, now: float | None = None) -> set[str]:
        """Every key pinned by an unexpired pin; expired pins are forgotten."""
        now = time.time() if now is None else now
        for name in [n for n, (_, exp) in self._pins.items() if exp < now]:
            del self._pins[name]
        return set().union(*(keys for keys, _ in self._pins.values()))

    def names(self) -> dict[str, float]:
        """Pin names and their expiry times."""
        return {n: exp for n, (_, exp) in self._pins.items()}


class Store:
    """Sources of artifacts on disk under `root`, each keyed by its 64-hex cache key."""

    def __init__(self, root: Path, fsync: bool = True):
        self.root = Path(root)
        self.sources = self.root / "sources"
        self.tmp = self.root / "tmp"
        self.fsync = fsync
        self.pins = Pins()
        self.shared = SharedFiles(self.root / "shared", _fsync_one if fsync else None)
        for d in (self.sources, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        # Leftovers of uploads or removals interrupted by a crash are garbage.
        for leftover in self.tmp.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        self._sizes: dict[str, int] = {}
        for meta in self.sources.glob(f"*/*/{META}"):
            key = meta.parent.name
            try:
                self._sizes[key] = _meta_size(json.loads(meta.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                continue

    def source_dir(self, key: str) -> Path:
        """Where the source `key` lives once uploaded (validated: no traversal possible)."""
        names.check_key(key)
        return self.sources / key[:2] / key

    def has_source(self, key: str) -> bool:
        """Whether every artifact of source `key` is stored."""
        return key in self._sizes

    def artifact_path(self, filename: str) -> Path | None:
        """The stored file of artifact `filename`, or None if it is not stored."""
        key = names.key_of(filename)
        if key not in self._sizes:
            return None
        path = self.source_dir(key) / filename
        return path if path.is_file() else None

    def log_path(self, key: str) -> Path | None:
        """The build log of source `key`, or None if none was stored."""
        if key not in self._sizes:
            return None
        path = self.source_dir(key) / LOG
        return path if path.is_file() else None

    def meta(self, key: str) -> dict | None:
        """The recorded sizes and sha256 of source `key`'s files, or None if not stored."""
        if key not in self._sizes:
            return None
        try:
            return json.loads((self.source_dir(key) / META).read_text())
        except FileNotFoundError:
            return None

    def entry(self, filename: str) -> FileEntry | None:
        """The recorded size and sha256 of one artifact, or None if not stored."""
        meta = self.meta(names.key_of(filename))
        for item in (meta or {}).get("artifacts", []):
            if item["filename"] == filename:
                return FileEntry(item["filename"], item["size"], item["sha256"])
        return None

    def touch(self, key: str) -> None:
        """Mark source `key` as just used, for least-recently-used collection."""
        if key in self._sizes:
            try:
                os.utime(self.source_dir(key))
            except FileNotFoundError:
                pass

    def total_size(self) -> int:
        """Bytes held by every stored source."""
        return sum(self._sizes.values())

    def keys(self) -> list[str]:
        """Every stored source's key."""
        return list(self._sizes)

    def begin(self, key: str) -> Upload:
        """Start receiving an upload of all artifacts of source `key`."""
        names.check_key(key)
        return Upload(self, key)

    def _place(self, upload: Upload) -> bool:
        """Rename a sealed upload into place, durably; False if the source was there.

        Safe off the event loop: it only touches the disk (the first rename wins)."""
        final = self.source_dir(upload.key)
        final.parent.mkdir(exist_ok=True)
        try:
            os.rename(upload.dir, final)
        except OSError:
            if final.is_dir():
                shutil.rmtree(upload.dir, ignore_errors=True)
                return False
            raise
        if self.fsync:
            _fsync_path(final.parent)
        return True

    def _record(self, upload: Upload, stored: bool) -> None:
        """Count a placed upload's source as stored (on the thread that owns the store)."""
        if stored or upload.key not in self._sizes:
            self._sizes[upload.key] = upload.manifest.total_size

    def remove(self, key: str) -> None:
        """Take source `key` out of the store at once; its bytes are deleted after."""
        src = self.source_dir(key)
        self._sizes.pop(key, None)
        trash = Path(tempfile.mkdtemp(prefix="remove-", dir=self.tmp))
        try:
            os.rename(src, trash / key)
        except FileNotFoundError:
            pass
        shutil.rmtree(trash, ignore_errors=True)

    def collect(self, limit: int, now: float | None = None) -> list[str]:
        """Remove least recently used unpinned sources until at most `limit` bytes remain."""
        total = self.total_size()
        if total <= limit:
            return []
        pinned = self.pins.pinned(now)
        aged = []
        for key in self._sizes:
            if key in pinned:
                continue
            try:
                aged.append((self.source_dir(key).stat().st_mtime, key))
            except FileNotFoundError:
                aged.append((0.0, key))
        removed = []
        for _, key in sorted(aged):
            if total <= limit:
                break
            total -= self._sizes.get(key, 0)
            self.remove(key)
            removed.append(key)
        if removed:
            self.shared.collect()
        return removed


def _libc_function(name: str):
    """A function of the C library by name, or None where it is missing."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


def _load_sync_file_range():
    """Linux's sync_file_range(SYNC_FILE_RANGE_WRITE), or None where it is missing."""
    function = _libc_function("sync_file_range")
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]

    def start_writeback(fd: int, offset: int, length: int) -> None:
        function(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE: start, do not wait

    return start_writeback


_sync_file_range = _load_sync_file_range()


def _load_fallocate():
    """Linux's fallocate(2) reserving a file's blocks, or None where it is missing.

    Unlike os.posix_fallocate, it never falls back to writing zeros on a
    filesystem that cannot reserve blocks: there it does nothing."""
    function = _libc_function("fallocate")
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]

    def reserve(fd: int, size: int) -> None:
        if function(fd, 0, 0, size) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise OSError(err, os.strerror(err))

    return reserve


_fallocate = _load_fallocate()
_WRITEBACK_STEP = 8 << 20


def _meta_size(meta: dict) -> int:
    files = list(meta["artifacts"]) + ([meta["log"]] if meta.get("log") else [])
    return sum(int(f["size"]) for f in files)


# fsyncs issued together share the filesystem's journal commits: an upload's ten
# files and its directory cost about one commit's time (2 ms here) instead of ten.
_FSYNC_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fsync")


def _fsync_path(path: Path, durable: Iterable[str] = ()) -> None:
    """fsync a file, or a directory and its files (but for the names in `durable`,
    whose bytes are on disk already), all in parallel.

    A directory's entries and its files' bytes are independent: both must be
    durable before the directory is renamed into place (whose own fsync
    follows), not one before the other, so an upload waits for one fsync's
    time instead of two in a row."""
    if path.is_dir():
        skip = set(durable)
        files = [child for child in path.iterdir() if child.is_file() and child.name not in skip]
        list(_FSYNC_POOL.map(_fsync_one, [*files, path]))
        return
    _fsync_one(path)


def _fsync_one(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Verifier:
    """Hashes an upload's files by reading them back as they are written, on its own thread.

    Bytes spliced from a socket never pass through Python, so they are hashed
    from the page cache, where they were just written; receiving and hashing
    then run side by side on two cores. With `writeback`, the thread also
    starts writing hashed bytes to disk, so the final fsync has little left to
    wait for (about 0.4 s less per GiB here) and the receiving thread does
    not pay for it (about 10% faster uploads than starting it there).
    """

    BLOCK = 1 << 20

    def __init__(self, name: str, writeback: bool = False):
        self._writeback = writeback and _sync_file_range is not None
        self._cond = threading.Condition()
        self._files: list[list] = []  # [path, size, bytes written so far]
        self._digests: list[str] = []
        self._error: OSError | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, path: Path, size: int) -> None:
        """The next file to hash: `size` bytes at `path`, none written yet."""
        with self._cond:
            self._files.append([path, size, 0])
            self._cond.notify()

    def wrote(self, upto: int) -> None:
        """The file added last now has its first `upto` bytes on disk."""
        with self._cond:
            self._files[-1][2] = upto
            self._cond.notify()

    def digests(self) -> list[str]:
        """The sha256 of every file added, once each is complete and hashed."""
        with self._cond:
            while len(self._digests) < len(self._files) and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            return list(self._digests)

    def stop(self) -> None:
        """Stop hashing; the thread ends soon after."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        view = memoryview(bytearray(self.BLOCK))
        index, fd = 0, None
        try:
            while True:
                with self._cond:
                    while not self._stopped and index >= len(self._files):
                        self._cond.wait()
                    if self._stopped:
                        return
                    path, size, _ = self._files[index]
                fd = os.open(path, os.O_RDONLY)
                digest = self._hash(fd, index, size, view)
                os.close(fd)
                fd = None
                if digest is None:
                    return
                with self._cond:
                    self._digests.append(digest)
                    self._cond.notify_all()
                index += 1
        except OSError as e:
            with self._cond:
                self._error = e
                self._cond.notify_all()
        finally:
            if fd is not None:
                os.close(fd)

    def _hash(self, fd: int, index: int, size: int, view: memoryview) -> str | None:
        h = hashlib.sha256()
        pos = flushed = 0
        while pos < size:
            with self._cond:
                while not self._stopped and self._files[index][2] <= pos:
                    self._cond.wait()
                if self._stopped:
                    return None
                written = self._files[index][2]
            n = os.preadv(fd, [view[: min(self.BLOCK, written - pos)]], pos)
            if n <= 0:
                raise OSError(f"{Path(self._files[index][0]).name} shrank while being hashed")
            h.update(view[:n])
            pos += n
            if self._writeback and (pos - flushed >= _WRITEBACK_STEP or pos == size):
                _sync_file_range(fd, flushed, pos - flushed)
                flushed = pos
        return h.hexdigest()


class _SmallFile:
    """A small file of an upload, held in memory until the upload is sealed."""

    def __init__(self, entry: FileEntry):
        self.entry = entry
        self.data = bytearray()

    def write(self, piece: memoryview) -> int:
        self.data += piece
        return len(piece)

    def close(self) -> None:
        pass


class Upload:
    """One source being received: a manifest line, then each declared file's bytes in order.

    Bytes arrive through `write` in pieces of any size, or straight from a
    socket through `take_from`. A file too long or an extra byte makes the
    upload fail at once, a wrong sha256 when it is sealed; `seal` then raises
    and `abort` (e.g. the connection dropped) removes the partial files.
    """

    def __init__(self, store: Store, key: str):
        self.store = store
        self.key = key
        self.dir = Path(tempfile.mkdtemp(prefix=f"upload-{key[:12]}-", dir=store.tmp))
        self.manifest: Manifest | None = None
        self.error: UploadError | None = None
        self.received = 0
        self._head = bytearray()
        self._index = 0
        self._file = None
        self._verifier: _Verifier | None = None
        self._hashed: list[FileEntry] = []  # files the verifier hashes, in its order
        self._small: list[_SmallFile] = []  # files held in memory, written at seal
        self._held = 0
        self._left = 0
        self._closed = False
        self._placed: bool | None = None  # once renamed into place: whether it was new

    def write(self, data: bytes) -> None:
        """Feed the next bytes of the request body."""
        self.received += len(data)
        if self.error is not None or self._closed:
            return
        try:
            self._feed(memoryview(data))
        except UploadError as e:
            self._fail(e)
        except OSError as e:
            self._fail(self._storage_error(e))

    def take_from(self, source: SocketSource, count: int) -> None:
        """Move the next `count` body bytes from `source` into the files.

        Stops early once the upload has failed; the caller learns how many bytes
        left the socket from `source.consumed`. The socket's own end (EOF, idle
        timeout) propagates as splice.SocketEnded."""
        end = self.received + count
        while self.received < end and self.error is None and not self._closed:
            if self._file is None or isinstance(self._file, _SmallFile):
                # The manifest line, a small file, or bytes past the declared files.
                limit = self._left if self._file is not None else 1 << 16
                self.write(source.recv(min(end - self.received, limit)))
                continue
            try:
                moved = source.splice_to(self._file.fileno(), min(end - self.received,
                                                                   self._left))
                self.received += moved
                self._advance(moved)
            except OSError as e:
                self._fail(self._storage_error(e))

    def _storage_error(self, e: OSError) -> UploadError:
        return UploadError(f"cannot store upload: {e.strerror}", self.key, 507)

    def _feed(self, data: memoryview) -> None:
        if self.manifest is None:
            newline = bytes(data).find(b"\n")
            if newline < 0:
                self._head += data
                if len(self._head) > MAX_MANIFEST_BYTES:
                    raise UploadError("manifest line is too long", self.key)
                return
            self._head += data[:newline]
            data = data[newline + 1:]
            try:
                parsed = json.loads(bytes(self._head))
            except ValueError:
                raise UploadError("manifest is not valid JSON", self.key) from None
            self.manifest = Manifest.parse(self.key, parsed)
            self._open_next()
        while len(data):
            if self._file is None:
                raise UploadError("more bytes than the manifest declares", self.key)
            piece = data[: self._left]
            taken = len(piece)
            # Unbuffered: pieces are already large, and a buffer only adds a copy.
            while piece:
                piece = piece[self._file.write(piece):]
            data = data[taken:]
            self._advance(taken)

    def _advance(self, count: int) -> None:
        """`count` more bytes of the current file are on disk."""
        self._left -= count
        if not isinstance(self._file, _SmallFile):
            self._verifier.wrote(self.manifest.files[self._index].size - self._left)
        if self._left == 0:
            self._close_current()
            self._open_next()

    def _open_next(self) -> None:
        # Zero-length files are complete as soon as they are opened.
        while self._index < len(self.manifest.files):
            entry = self.manifest.files[self._index]
            if entry.size <= SHARE_MAX and self._held + entry.size <= _HELD_BYTES:
                # Most are copies of bytes the store has: linked at seal, never written.
                self._held += entry.size
                self._file = _SmallFile(entry)
                self._small.append(self._file)
                self._left = entry.size
                if entry.size:
                    return
                self._close_current()
                continue
            path = self.dir / entry.filename
            if self._verifier is None:
                self._verifier = _Verifier(f"sha256-{self.key[:12]}",
                                           writeback=self.store.fsync)
            self._file = open(path, "wb", buffering=0)  # noqa: SIM115 - stays open across write() calls
            if entry.size >= _PREALLOCATE_FROM and _fallocate is not None:
                # A full disk fails the upload now, not gigabytes later; and
                # the filesystem need not find room page by page (~3% faster).
                _fallocate(self._file.fileno(), entry.size)
            self._verifier.add(path, entry.size)
            self._hashed.append(entry)
            self._left = entry.size
            if entry.size:
                return
            self._close_current()
        self._file = None

    def _close_current(self) -> None:
        self._file.close()
        self._file = None
        self._index += 1

    def finish(self) -> bool:
        """Make the source visible; True if stored, False if it was already there."""
        self.seal()
        return self.commit()

    def seal(self) -> None:
        """Check that everything arrived intact and make it durable; may run off the event loop."""
        if self.error is None and self.manifest is None:
            self._fail(UploadError("empty upload: no manifest line", self.key))
        if self.error is None and self._index < len(self.manifest.files):
            entry = self.manifest.files[self._index]
            self._fail(UploadError(f"upload truncated in {entry.filename}: "
                                   f"{self._left} of {entry.size} bytes missing", self.key))
        if self.error is None:
            self._check_digests()
        if self.error is not None:
            raise self.error
        durable = self.store.shared.place(self.dir, [(f.entry, f.data) for f in self._small])
        meta = {"key": self.key, **self.manifest.to_json(), "uploaded": time.time()}
        (self.dir / META).write_text(json.dumps(meta, indent=1))
        if self.store.fsync:
            _fsync_path(self.dir, durable)
        self._closed = True

    def _check_digests(self) -> None:
        got = {f.entry.filename: hashlib.sha256(f.data).hexdigest() for f in self._small}
        if self._verifier is not None:
            try:
                got.update(zip((e.filename for e in self._hashed), self._verifier.digests(),
                               strict=True))
            except OSError as e:
                self._fail(UploadError(f"cannot hash upload: {e}", self.key, 507))
                return
            finally:
                self._verifier.stop()
        for entry in self.manifest.files:
            if got[entry.filename] != entry.sha256:
                self._fail(UploadError(f"sha256 mismatch for {entry.filename}: declared "
                                       f"{entry.sha256}, received {got[entry.filename]}",
                                       self.key))
                return

    def place(self) -> None:
        """Rename a sealed upload into place and make that durable; may run off the event
        loop (the fsync of the directory it lands in then does not hold up the trove)."""
        if self._placed is None:
            self._placed = self.store._place(self)

    def commit(self) -> bool:
        """Place a sealed upload (if not yet) and count it stored (on the thread that owns
        the store); True if stored, False if the source was already there."""
        self.place()
        self.store._record(self, self._placed)
        return self._placed

    def abort(self) -> None:
        """Forget everything received so far."""
        if self._verifier is not None:
            self._verifier.stop()
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def _fail(self, error: UploadError) -> None:
        self.error = error
        self.abort()

"""A small blocking client of the trove's artifact cache, for workers, controller and deploy.

Standard library only (http.client), no Twisted: callers run it in a thread or
a plain process. Everything streams in 1 MiB blocks; downloads are written to
a temporary file beside the destination and renamed only after the sha256 and
size check, so a destination path either holds the right bytes or nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from distbuild.errors import TroveError
from distbuild.files import sha256_file
from distbuild.trove import names
from distbuild.trove.connections import POOL, NoDelayConnection

BLOCK = 1 << 20
# A trove that restarts is back within a few seconds: a failed transfer or
# query is tried again after 0.5, 1, 2, 4 and 8 s, then given up on.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
# Small enough that a buffer is still in the CPU's cache when it is hashed.
_PIPELINE_BLOCK = 256 << 10
_PIPELINE_DEPTH = 16
T = TypeVar("T")


class CacheClientError(TroveError):
    """The artifact cache refused a request or could not be reached; `status` if it answered."""

    def __init__(self, what: str, where: str | None = None, status: int | None = None,
                 retryable: bool = False):
        super().__init__(what, where, retryable=retryable)
        self.status = status


@dataclass(frozen=True)
class Downloaded:
    """A downloaded artifact: where it is, its size and its verified sha256."""

    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class Stored:
    """An upload's answer: whether it stored the source (False: it was there already),
    and the trove's receipt for it ("" from a trove that gives none)."""

    stored: bool
    receipt: str = ""


class CacheClient:
    """Blocking client of one artifact cache, e.g. CacheClient('http://127.0.0.1:8080/')."""

    def __init__(self, base_url: str, timeout: float = 60.0,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise CacheClientError("artifact cache URL must be http://HOST[:PORT][/PREFIX]",
                                   base_url)
        self.base_url = base_url
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.prefix = parsed.path.rstrip("/")
        self.timeout = timeout
        self.retry_delays = retry_delays

    def _retrying(self, fn: Callable[[], T]) -> T:
        """`fn()`, again after each delay while it fails in a way that may pass."""
        for delay in self.retry_delays:
            try:
                return fn()
            except CacheClientError as e:
                # A full disk (507) or a refusal (4xx) stays as it is; a restart does not.
                if not e.retryable or e.status == 507:
                    raise
            time.sleep(delay)
        return fn()

    # --- queries -------------------------------------------------------------

    def has_artifacts(self, filenames: Iterable[str]) -> dict[str, bool]:
        """Which artifacts are cached (morph-cache-server's POST /1.0/artifacts)."""
        wanted = [names.check_filename(f) for f in filenames]
        return self._json("POST", "/1.0/artifacts", wanted)

    def cached_sources(self, keys: Iterable[str]) -> dict[str, bool]:
        """Which sources (cache keys) have all their artifacts cached, in one round trip."""
        wanted = [names.check_key(k) for k in keys]
        return self._json("POST", "/2.0/sources/query", {"keys": wanted})["sources"]

    def source_metas(self, keys: Iterable[str]) -> dict[str, dict | None] | None:
        """`source_meta` of several sources in one round trip; None: the trove cannot."""
        wanted = [names.check_key(k) for k in keys]
        answer = self._json("POST", "/2.0/sources/metas", {"keys": wanted}, missing_ok=True)
        return None if answer is None else answer["sources"]

    def source_meta(self, key: str) -> dict | None:
        """A cached source's files with sizes and sha256, or None if it is not cached."""
        return self._json("GET", f"/2.0/sources/{names.check_key(key)}", missing_ok=True)

    def sha1s(self, repo: str, ref: str) -> dict | None:
        """The commit and tree `ref` names in trove repository `repo` (morph's GET
        /1.0/sha1s: {"sha1", "tree", ...}); None if the trove does not know them.

        Asked once, not retried: a caller has the slower way (a mirror) to fall back on."""
        query = urllib.parse.urlencode({"repo": repo, "ref": ref})
        return self._json("GET", f"/1.0/sha1s?{query}", missing_ok=True, retry=False)

    def fetch_log(self, key: str) -> bytes | None:
        """The build log stored with source `key`, or None if there is none."""
        def fetch() -> bytes | None:
            conn, resp = self._request("GET", f"/2.0/sources/{names.check_key(key)}/log")
            try:
                if resp.status == 404:
                    return None
                self._check(resp, key)
                return resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise CacheClientError(f"download failed: {e}", key, retryable=True) from None
            finally:
                conn.close()

        return self._retrying(fetch)

    # --- downloads -----------------------------------------------------------

    def download(self, filename: str, dest: Path,
                 expected_sha256: str | None = None) -> Downloaded:
        """Fetch one artifact to `dest`, checking its sha256 (given, or as the trove recorded)."""
        names.check_filename(filename)
        dest = Path(dest)

        def fetch() -> Downloaded:
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb", buffering=0) as out:
                    size, digest = self.stream(filename, out, expected_sha256)
                os.replace(tmp, dest)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            return Downloaded(dest, size, digest)

        return self._retrying(fetch)

    def stream(self, filename: str, out: BinaryIO,
               expected_sha256: str | None = None) -> tuple[int, str]:
        """Write one artifact to the open file `out` (e.g. a pipe into tar); (size, sha256).

        Raises CacheClientError if it arrives short or its sha256 is wrong; what
        was already written to `out` is then the caller's to discard.
        """
        names.check_filename(filename)
        query = urllib.parse.urlencode({"filename": filename})
        conn, resp = self._request("GET", f"/1.0/artifacts?{query}")
        try:
            self._check(resp, filename)
            want = expected_sha256 or resp.getheader("x-distbuild-sha256")
            length = resp.getheader("content-length")
            size, got = _pipelined_copy(resp, out)
        finally:
            conn.close()
        if length is not None and size != int(length):
            raise CacheClientError(f"download truncated: {size} of {length} bytes",
                                   filename, retryable=True)
        if want and got != want:
            # Every byte arrived: the stored copy is wrong, and will be wrong again.
            raise CacheClientError(f"sha256 mismatch: expected {want}, got {got}",
                                   filename)
        return size, got

    # --- uploads -------------------------------------------------------------

    def upload_source(self, key: str, artifacts: Mapping[str, Path], token: str,
                      log: Path | None = None,
                      sha256s: Mapping[str, str] | None = None) -> bool:
        """Upload every artifact of source `key` (filename -> file) and its log, atomically.

        Returns True if stored, False if the source was already cached. `sha256s`
        may give digests the caller already computed, to skip a read of the file.
        """
        return self.store_source(key, artifacts, token, log, sha256s).stored

    def store_source(self, key: str, artifacts: Mapping[str, Path], token: str,
                     log: Path | None = None,
                     sha256s: Mapping[str, str] | None = None,
                     log_sha256: str | None = None) -> Stored:
        """`upload_source`, answered with the trove's receipt for the source as well
        (`log_sha256`, if given, is the log's, to skip reading it again)."""
        names.check_key(key)
        entries = []
        for filename, path in artifacts.items():
            if names.key_of(filename) != key:
                raise CacheClientError(f"artifact does not belong to key {key}", filename)
            digest = (sha256s or {}).get(filename) or _sha256(path)
            entries.append({"filename": filename, "size": os.path.getsize(path),
                            "sha256": digest})
        manifest = {"artifacts": entries, "log": None}
        if log is not None:
            manifest["log"] = {"size": os.path.getsize(log),
                               "sha256": log_sha256 or _sha256(log)}
        head = json.dumps(manifest).encode() + b"\n"
        paths = [Path(p) for p in artifacts.values()] + ([Path(log)] if log else [])
        length = len(head) + sum(e["size"] for e in entries) + (
            manifest["log"]["size"] if log else 0)
        return self._retrying(lambda: self._put_source(key, head, paths, length, token))

    def _put_source(self, key: str, head: bytes, paths: list[Path], length: int,
                    token: str) -> Stored:
        conn, reused = self._kept_connection()
        try:
            return self._put_on(conn, key, head, paths, length, token)
        except CacheClientError as e:
            if not (reused and e.retryable and e.status is None):
                raise
        # The trove closed the kept connection meanwhile (its idle timeout, a restart).
        # Sending again is safe: a source stored twice is stored once, with a receipt.
        return self._put_on(self._connection(), key, head, paths, length, token)

    def _put_on(self, conn: http.client.HTTPConnection, key: str, head: bytes,
                paths: list[Path], length: int, token: str) -> Stored:
        try:
            conn.putrequest("PUT", self.prefix + f"/2.0/sources/{key}")
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(length))
            conn.putheader("Authorization", f"Bearer {token}")
            conn.endheaders()
            try:
                conn.send(head)
                for path in paths:
                    with open(path, "rb") as f:
                        # sendfile: the kernel moves the bytes, no copy through Python.
                        conn.sock.sendfile(f)
            except OSError as e:
                # The trove may have refused the upload from its headers (a bad token,
                # say) and closed: its answer says why better than the reset does.
                resp = _early_answer(conn)
                if resp is None:
                    raise CacheClientError(f"upload failed: {e}", self.base_url,
                                           retryable=True) from None
            else:
                resp = conn.getresponse()
            self._check(resp, key)
            answer = json.loads(resp.read())
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise CacheClientError(f"upload failed: {e}", self.base_url, retryable=True) from None
        except BaseException:
            conn.close()
            raise
        POOL.give(conn, resp)
        receipt = answer.get("receipt")
        return Stored(bool(answer["stored"]), receipt if isinstance(receipt, str) else "")

    # --- pins ----------------------------------------------------------------

    def pin(self, name: str, keys: Iterable[str], token: str, ttl: float = 3600) -> None:
        """Keep `keys` from garbage collection for `ttl` seconds under pin `name`."""
        self._json("PUT", f"/2.0/pins/{name}", {"keys": list(keys), "ttl": ttl}, token=token)

    def unpin(self, name: str, token: str) -> None:
        """Drop pin `name`."""
        self._json("DELETE", f"/2.0/pins/{name}", token=token)

    # --- plumbing ------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        return NoDelayConnection(self.host, self.port, timeout=self.timeout, blocksize=BLOCK)

    def _kept_connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """A kept-alive connection from the process's pool (or a new one); whether kept."""
        return POOL.take(self.host, self.port, self.timeout, BLOCK)

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict | None = None, conn: http.client.HTTPConnection | None = None):
        conn = conn or self._connection()
        try:
            conn.request(method, self.prefix + path, body=body, headers=headers or {})
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise CacheClientError(f"cannot reach artifact cache: {e}", self.base_url,
                                   retryable=True) from None

    def _json(self, method: str, path: str, body=None, token: str | None = None,
              missing_ok: bool = False, retry: bool = True):
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()

        def ask():
            conn, resp = self._kept_request(method, path, data, headers)
            try:
                if missing_ok and resp.status == 404:
                    resp.read()
                    answer = None
                else:
                    self._check(resp, path)
                    answer = json.loads(resp.read())
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise CacheClientError(f"artifact cache went away: {e}", self.base_url,
                                       retryable=True) from None
            except BaseException:
                conn.close()  # an error's body may be unread: the connection is spent
                raise
            POOL.give(conn, resp)
            return answer

        return self._retrying(ask) if retry else ask()

    def _kept_request(self, method: str, path: str, body: bytes | None,
                      headers: dict) -> tuple[http.client.HTTPConnection,
                                              http.client.HTTPResponse]:
        """A query sent on a kept connection (a new one if need be), and its response."""
        conn, reused = self._kept_connection()
        if reused:
            try:
                conn.request(method, self.prefix + path, body=body, headers=headers)
                return conn, conn.getresponse()
            except (OSError, http.client.HTTPException):
                # The trove closed it meanwhile (its idle timeout, a restart): a query
                # is safe to send again, on a new connection.
                conn.close()
                conn = self._connection()
        return self._request(method, path, body, headers, conn)

    def _check(self, resp: http.client.HTTPResponse, what: str) -> None:
        if 200 <= resp.status < 300:
            return
        message = resp.read(4096).decode("utf-8", "replace").strip()
        message = message.removeprefix("error: ") or resp.reason
        raise CacheClientError(f"artifact cache answered {resp.status}: {message}",
                               what, status=resp.status, retryable=resp.status >= 500)


def _pipelined_copy(resp: http.client.HTTPResponse, out: BinaryIO) -> tuple[int, str]:
    """Copy a response body to `out`, hashing it; (size, sha256).

    This thread receives and writes; another hashes the same buffers behind
    it. Socket reads, file writes and sha256 all release the GIL, so on two
    cores the hash (the slowest part: 0.62 s per GiB here) never waits for
    the network or the disk.
    """
    buffers = [bytearray(_PIPELINE_BLOCK) for _ in range(_PIPELINE_DEPTH)]
    free: queue.SimpleQueue = queue.SimpleQueue()
    filled: queue.SimpleQueue = queue.SimpleQueue()
    for index in range(_PIPELINE_DEPTH):
        free.put(index)
    h = hashlib.sha256()

    def hash_filled() -> None:
        while (item := filled.get()) is not None:
            index, n = item
            h.update(memoryview(buffers[index])[:n])
            free.put(index)

    hasher = threading.Thread(target=hash_filled, name="cache-download-sha256", daemon=True)
    hasher.start()
    size = 0
    try:
        while True:
            index = free.get()
            view = memoryview(buffers[index])
            n = resp.readinto(view)
            if not n:
                break
            piece = view[:n]
            while piece:
                piece = piece[out.write(piece):]
            size += n
            filled.put((index, n))
    except (OSError, http.client.HTTPException) as e:
        raise CacheClientError(f"download failed: {e}", "artifact cache",
                               retryable=True) from None
    finally:
        filled.put(None)
        hasher.join()
    return size, h.hexdigest()


def _early_answer(conn: http.client.HTTPConnection) -> http.client.HTTPResponse | None:
    """The response a server sent before it stopped reading the request, if any."""
    try:
        resp = conn.getresponse()
    except (OSError, http.client.HTTPException):
        return None
    return resp if resp.status >= 400 else None


def _sha256(path: Path) -> str:
    return sha256_file(path)[0]

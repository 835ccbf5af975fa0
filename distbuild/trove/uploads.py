"""Request bodies at the trove: uploads streamed into the store, refusals from the headers.

Twisted's Request reads (and for a large body, spools to a temporary file)
the whole body before anything renders it. `TroveRequest` decides as soon
as the headers are in: an upload with a valid token streams into the store;
a request that will be refused (no or a bad token, a body larger than its
endpoint takes, a body of unknown length where one is needed) is answered
401, 403, 411 or 413 at once and its connection closed, so nothing of its
body is read, spooled or stored.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer, tcp
from twisted.web import server

from distbuild import tokens
from distbuild.errors import TroveError
from distbuild.trove.splice import SocketEnded, SocketSource
from distbuild.trove.store import Upload, UploadError

UPLOAD_PATH_RE = re.compile(rb"/2\.0/sources/([0-9a-f]{64})")
PIN_PATH_RE = re.compile(rb"/2\.0/pins/([^/?]*)")
MAX_QUERY_BODY = 8 << 20
# Bodies with more than SPLICE_MIN bytes still to come are spliced; the last
# SPLICE_TAIL bytes are left for Twisted to read, so it sees the body end.
SPLICE_MIN = 1 << 20
SPLICE_TAIL = 1 << 12
TOKEN_HEADER = b"authorization"
_REASONS = {400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
            411: b"Length Required", 413: b"Content Too Large", 500: b"Internal Server Error"}


def token_from(request) -> str | None:
    """The bearer token of a request, or None if it sent none."""
    value = request.requestHeaders.getRawHeaders(TOKEN_HEADER, [None])[0]
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class RefusedBody:
    """Request body sink for an upload refused before its body arrived: bytes are dropped."""

    def __init__(self, error: UploadError):
        self.error = error

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args) -> None:
        pass

    def tell(self) -> int:
        return 0

    def read(self, *args) -> bytes:
        return b""

    def close(self) -> None:
        pass


class UploadSink(RefusedBody):
    """Request body sink that hands an Upload's bytes to a writer thread.

    The event loop only queues what the socket delivers; writing runs on the
    thread and hashing on the Upload's own, so receiving and storing overlap.
    When more than HIGH bytes wait, the socket stops being read until the
    thread is down to LOW: memory stays bounded however fast the client sends.
    A large body is taken off the event loop altogether (`take_socket`).
    """

    HIGH = 16 << 20
    LOW = 4 << 20

    def __init__(self, upload: Upload, request, reactor, log: Callable[[str], None]):
        self.upload = upload
        self.log = log
        self.error = None
        self.request = request
        self.reactor = reactor
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.pending = 0
        self.paused = False
        self.body_done = False
        self.taking: _Take | None = None
        self.took = False
        self.sealed: defer.Deferred | None = None
        self.thread = threading.Thread(target=self._run, name=f"upload-{upload.key[:12]}",
                                       daemon=True)
        self.thread.start()

    def write(self, data: bytes) -> None:
        with self.lock:
            self.pending += len(data)
            over = self.pending > self.HIGH
        self.queue.put(data)
        transport = self.request.transport
        if over and not self.paused and transport is not None:
            self.paused = True
            transport.pauseProducing()

    def take_socket(self, decoder, count: int) -> None:
        """Stop Twisted reading; the thread moves the body's next `count` bytes itself.

        `decoder` is the channel's body decoder: it is told how many bytes the
        thread took when the socket is handed back (`_give_back`)."""
        channel = self.request.channel
        transport = self.request.transport
        self.took = True
        try:
            source = SocketSource(transport.fileno(), channel.timeOut)
        except OSError:  # out of descriptors, say: Twisted keeps reading instead
            return
        transport.pauseProducing()
        # The channel's idle timer cannot see the thread's reads; the thread keeps its own.
        self.taking = _Take(source, count, decoder, channel.setTimeout(None))
        self.queue.put(self.taking)

    def tell(self) -> int:
        return self.upload.received

    def seal(self) -> defer.Deferred:
        """Fires (on the event loop) once every byte is stored, synced and in place, or fails."""
        self.body_done = True
        self.sealed = defer.Deferred()
        self.queue.put(_SEAL)
        return self.sealed

    def close(self) -> None:
        if self.taking is not None:
            self.taking.source.stop()
        if self.sealed is None:
            self.queue.put(_ABORT)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _ABORT:
                self.upload.abort()
                return
            if item is _SEAL:
                try:
                    self.upload.seal()
                    self.upload.place()
                except Exception as e:  # handed to the event loop as the answer
                    self.upload.abort()
                    self.reactor.callFromThread(self.sealed.errback, e)
                else:
                    self.reactor.callFromThread(self.sealed.callback, None)
                return
            if isinstance(item, _Take):
                self._take(item)
                continue
            self.upload.write(item)
            with self.lock:
                self.pending -= len(item)
                drained = self.pending < self.LOW
            if drained and self.paused:
                self.reactor.callFromThread(self._resume)

    def _take(self, take: _Take) -> None:
        ended = None
        try:
            self.upload.take_from(take.source, take.count)
        except SocketEnded as e:
            ended = e
        finally:
            take.source.close()
        self.reactor.callFromThread(self._give_back, take, ended)

    def _give_back(self, take: _Take, ended: SocketEnded | None) -> None:
        self.taking = None
        channel = self.request.channel
        if channel is None:  # the connection was lost meanwhile; close() has cleaned up
            return
        take.decoder.contentLength -= take.source.consumed
        channel.setTimeout(take.idle)
        if ended is not None and ended.timed_out:
            self.log(f"dropped upload of {self.upload.key} from {peer_of(self.request)}: "
                     f"{ended.why}")
            self.request.transport.abortConnection()
            return
        # Twisted reads the body's last bytes, or notices the connection's end.
        self.request.transport.resumeProducing()

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            # Once the body is complete the channel manages reading itself.
            if not self.body_done and self.taking is None and self.request.transport is not None:
                self.request.transport.resumeProducing()


@dataclass
class _Take:
    """The writer thread's order to move `count` body bytes from the socket itself.

    `idle` is the channel's idle timeout, put back when the socket is."""

    source: SocketSource
    count: int
    decoder: object
    idle: float | None


_SEAL = object()
_ABORT = object()


def check_upload_token(secret: bytes, key: str, token: str | None) -> None:
    """Raise UploadError 401 for no token, 403 for a forged, expired or foreign one."""
    if token is None:
        raise UploadError("upload needs a token (Authorization: Bearer TOKEN)", key, 401)
    try:
        tokens.verify(secret, key, token)
    except tokens.TokenError as e:
        raise UploadError(e.what, key, 403) from None


class TroveRequest(server.Request):
    """A request refused from its headers, or whose upload goes straight into the store."""

    refused_early = False

    def gotLength(self, length):
        site = self.channel.site if self.channel else None
        cache = getattr(site, "cache", None)
        # The request line is parsed before the body starts but only kept on the
        # channel; if a Twisted release renames it we fall back to a temp file.
        command = getattr(self.channel, "_command", None)
        path = getattr(self.channel, "_path", None)
        if cache is None or not isinstance(path, bytes):
            return super().gotLength(length)
        refusal = _refusal(cache, command, path.split(b"?", 1)[0], length, token_from(self))
        if refusal is not None:
            self._refuse_now(refusal)
            return
        match = UPLOAD_PATH_RE.fullmatch(path)
        if command != b"PUT" or match is None:
            return super().gotLength(length)
        key = match.group(1).decode()
        try:
            self.content = UploadSink(cache.store.begin(key), self, cache.reactor, cache.log)
        except UploadError as e:
            self.content = RefusedBody(e)
        except TroveError as e:
            self.content = RefusedBody(UploadError(e.what, e.where, 500))

    def _refuse_now(self, error: UploadError) -> None:
        """Answer now and close: the body (if any) is never read."""
        self.refused_early = True
        self.content = RefusedBody(error)
        cache = self.channel.site.cache
        cache.metrics.refused(error.status)
        cache.log(f"refused {self.channel._command.decode('ascii', 'replace')} "
                  f"{self.channel._path.decode('ascii', 'replace')[:200]} from "
                  f"{peer_of(self)} before its body: {error}")
        body = f"error: {error}\n".encode()
        head = (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                % (error.status, _REASONS.get(error.status, b"Error"), len(body)))
        self.channel.transport.write(head + body)
        self.channel.loseConnection()

    def requestReceived(self, command, path, version):
        if self.refused_early:
            return  # answered already; the connection is closing
        super().requestReceived(command, path, version)

    def handleContentChunk(self, data):
        super().handleContentChunk(data)
        sink = self.content
        if not isinstance(sink, UploadSink) or sink.took or sink.upload.error is not None:
            return
        # Twisted's decoder for a body of known length counts the bytes still to
        # come; chunked bodies, TLS or a renamed attribute keep Twisted's reads.
        decoder = getattr(self.channel, "_transferDecoder", None)
        remaining = getattr(decoder, "contentLength", None)
        if (isinstance(remaining, int) and remaining > SPLICE_MIN
                and isinstance(self.transport, tcp.Connection)):
            sink.take_socket(decoder, remaining - SPLICE_TAIL)


def _refusal(cache, command: bytes, path: bytes, length: int | None,
             token: str | None) -> UploadError | None:
    """Why a request will be refused, judging by its request line and headers; None if not."""
    upload = UPLOAD_PATH_RE.fullmatch(path)
    pin = PIN_PATH_RE.fullmatch(path)
    try:
        if command == b"PUT" and upload is not None:
            check_upload_token(cache.secret(), upload.group(1).decode(), token)
            return None
        if command in (b"PUT", b"DELETE") and pin is not None:
            check_upload_token(cache.secret(), f"pin:{pin.group(1).decode('utf-8', 'replace')}",
                               token)
    except UploadError as e:
        return e
    if length is None:
        return UploadError("a request body must say its Content-Length", status=411)
    if length > MAX_QUERY_BODY:
        return UploadError(f"request body of {length} bytes is over this endpoint's "
                           f"{MAX_QUERY_BODY} bytes", status=413)
    return None


def peer_of(request) -> str:
    """HOST:PORT of the client that sent `request`, for log lines."""
    address = request.getClientAddress()
    return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"

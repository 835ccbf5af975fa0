"""Sending a stored file as an HTTP response, for the artifact cache.

Files of 1 MiB or more are sent with sendfile(2) by a thread, straight from
the page cache; smaller ones stream from disk through a producer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from twisted.internet import tcp

from distbuild.trove.splice import FileSender, SocketEnded
from distbuild.trove.uploads import peer_of

# Files of at least this size are sent with sendfile(2) from a thread.
SENDFILE_MIN = 1 << 20


class _FileProducer:
    """Streams a file to a request in large blocks, pausing when the socket is full."""

    BLOCK = 1 << 20

    def __init__(self, request, f):
        self.request = request
        self.file = f
        self.paused = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addBoth(self._lost)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.file is not None:
            block = self.file.read(self.BLOCK)
            if not block:
                self.stopProducing()
                self.request.unregisterProducer()
                self.request.finish()
                return
            self.request.write(block)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def _lost(self, result):
        self.stopProducing()
        return None


def serve_file(request, path: Path, content_type: bytes, reactor,
               idle_timeout: float | None, log: Callable[[str], None]) -> int | None:
    """Start sending `path` as the response (headers only for HEAD): its size, or None if
    it is gone. The caller returns NOT_DONE_YET for a GET (b"" for a HEAD)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the producer when done
    except FileNotFoundError:
        return None
    size = _size(f)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", str(size).encode())
    if request.method == b"HEAD":
        f.close()
        return size
    if size >= SENDFILE_MIN and isinstance(request.transport, tcp.Connection):
        _SentFile(request, f, size, reactor, idle_timeout, log).start()
    else:
        _FileProducer(request, f).start()
    return size


class _SentFile:
    """Sends a large file with sendfile(2) from a thread, once Twisted has sent the headers.

    The kernel sends straight from the page cache: about a third of the
    trove's CPU time per GiB of the producer's reads and writes. Twisted does
    not write to a connection while its response is unfinished, so the thread
    has the socket to itself."""

    def __init__(self, request, f, size: int, reactor, idle_timeout: float | None,
                 log: Callable[[str], None]):
        self.request = request
        self.log = log
        self.file = f
        self.size = size
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.sender: FileSender | None = None
        self.lost = False

    def start(self) -> None:
        self.request.notifyFinish().addErrback(self._lost)
        self.request.write(b"")  # the status line and headers, into Twisted's buffer
        self._when_flushed(self.reactor.seconds(), 0)

    def _when_flushed(self, since: float, tries: int) -> None:
        if self.lost:
            self.file.close()
            return
        transport = self.request.transport
        # A transport with bytes still to send stays registered for writing;
        # usually the headers leave at the next turn of the loop.
        if transport in self.reactor.getWriters():
            waited = self.reactor.seconds() - since
            if self.idle_timeout is not None and waited > self.idle_timeout:
                self.file.close()
                self._drop(f"headers unsent for {self.idle_timeout:g} s")
                return
            # The first few turns are free; a client slow to read is polled.
            self.reactor.callLater(0 if tries < 3 else 0.01, self._when_flushed, since,
                                   tries + 1)
            return
        try:
            self.sender = FileSender(transport.fileno(), self.idle_timeout)
        except OSError:  # out of descriptors, say: send it through Twisted instead
            _FileProducer(self.request, self.file).start()
            return
        threading.Thread(target=self._run, name="sendfile", daemon=True).start()

    def _run(self) -> None:
        ended = None
        try:
            self.sender.send(self.file.fileno(), 0, self.size)
        except SocketEnded as e:
            ended = e
        finally:
            self.sender.close()
        self.reactor.callFromThread(self._done, ended)

    def _done(self, ended: SocketEnded | None) -> None:
        self.file.close()
        if self.lost:
            return
        if ended is not None:
            if ended.timed_out:
                self._drop(ended.why)
            else:
                self.request.transport.abortConnection()
            return
        self.request.sentLength = self.size
        self.request.finish()

    def _drop(self, why: str) -> None:
        self.log(f"dropped download of {Path(self.file.name).name} to "
                 f"{peer_of(self.request)}: {why}")
        self.request.transport.abortConnection()

    def _lost(self, failure) -> None:
        self.lost = True
        if self.sender is not None:
            self.sender.stop()


def _size(f) -> int:
    return os.fstat(f.fileno()).st_size

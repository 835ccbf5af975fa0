"""Moving bodies between sockets and files in a thread, without copying them through Python.

Uploads: Linux's splice(2) moves bytes from the socket into a pipe and from
the pipe into the file inside the kernel; the upload's sha256 is then computed
from the page cache on another thread (see store._Verifier). Receiving 1 GiB
this way costs about 0.4 CPU-seconds here, against about 1.0 through Twisted's
reads. Downloads: sendfile(2) sends the file from the page cache. No Twisted
here: the HTTP layer hands over a socket it has stopped using.
"""

from __future__ import annotations

import fcntl
import functools
import os
import select
import threading
import time

PIPE_SIZE = 1 << 20
_POLL_SLICE_MS = 500


class SocketEnded(Exception):
    """The socket can take or give no more: closed, reset, idle too long, or stop()."""

    def __init__(self, why: str, timed_out: bool = False):
        super().__init__(why)
        self.why = why
        self.timed_out = timed_out


class _ThreadSocket:
    """A non-blocking socket used from a thread, waiting with poll between calls.

    Works on its own duplicate of the descriptor, so the socket stays valid
    even if the event loop closes its copy meanwhile."""

    EVENTS = select.POLLIN

    def __init__(self, fd: int, idle_timeout: float | None = None):
        self.fd = os.dup(fd)
        self.idle_timeout = idle_timeout
        self._stopped = threading.Event()
        self._poll = select.poll()
        self._poll.register(self.fd, self.EVENTS)

    def stop(self) -> None:
        """Make a waiting or later call raise SocketEnded (from any thread)."""
        self._stopped.set()

    def close(self) -> None:
        """Release the duplicate descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _wait(self, call):
        idle_since = time.monotonic()
        while True:
            if self._stopped.is_set():
                raise SocketEnded("stopped")
            try:
                return call()
            except BlockingIOError:
                pass
            except OSError as e:
                raise SocketEnded(f"the connection failed: {e.strerror}") from None
            if self._poll.poll(_POLL_SLICE_MS):
                idle_since = time.monotonic()
            elif self.idle_timeout is not None \
                    and time.monotonic() - idle_since > self.idle_timeout:
                raise SocketEnded(f"no progress for {self.idle_timeout:g} s", timed_out=True)


class SocketSource(_ThreadSocket):
    """Reads a request body from a socket into files; `consumed` counts every byte taken."""

    def __init__(self, fd: int, idle_timeout: float | None = None):
        super().__init__(fd, idle_timeout)
        self.consumed = 0
        self._pipe: tuple[int, int] | None = None
        self._pipe_size = PIPE_SIZE

    def recv(self, limit: int) -> bytes:
        """At least one and at most `limit` bytes, waiting for them if need be."""
        data = self._wait(lambda: os.read(self.fd, limit))
        if not data:
            raise SocketEnded("the client closed the connection")
        self.consumed += len(data)
        return data

    def splice_to(self, out_fd: int, limit: int) -> int:
        """Move at least one and at most `limit` bytes into `out_fd`; returns how many.

        An OSError is the destination's (disk full, say): those bytes are lost."""
        if not hasattr(os, "splice"):
            data = self.recv(limit)
            _write_all(out_fd, data)
            return len(data)
        r, w = self._ensure_pipe()
        moved = self._wait(lambda: os.splice(self.fd, w, min(limit, self._pipe_size)))
        if moved == 0:
            raise SocketEnded("the client closed the connection")
        self.consumed += moved
        done = 0
        try:
            while done < moved:
                done += os.splice(r, out_fd, moved - done)
        except OSError:
            # What is left in the pipe belongs to no file now.
            self._close_pipe()
            raise
        return moved

    def close(self) -> None:
        """Release the duplicate descriptor and the pipe."""
        self._close_pipe()
        super().close()

    def _ensure_pipe(self) -> tuple[int, int]:
        if self._pipe is None:
            r, w = os.pipe2(os.O_CLOEXEC)
            try:
                # A bigger pipe moves more per call; the default is 64 KiB.
                self._pipe_size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except (OSError, AttributeError):
                self._pipe_size = 1 << 16
            self._pipe = (r, w)
        return self._pipe

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            for end in self._pipe:
                os.close(end)
            self._pipe = None


class FileSender(_ThreadSocket):
    """Sends files to a socket with sendfile(2)."""

    EVENTS = select.POLLOUT

    def send(self, file_fd: int, offset: int, count: int) -> None:
        """Send `count` bytes of `file_fd` from `offset`, waiting while the socket is full."""
        end = offset + count
        while offset < end:
            n = self._wait(functools.partial(os.sendfile, self.fd, file_fd, offset,
                                             min(end - offset, 1 << 30)))
            if n == 0:
                raise SocketEnded("the file is shorter than its recorded size")
            offset += n


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

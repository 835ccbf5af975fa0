"""Kept-alive HTTP connections to troves, shared by all the threads of a process.

A worker makes a new CacheClient, on a new thread, for every job; a
connection per job cost both ends a TCP handshake and the trove a new
channel (accept, set-up, teardown) for each step's query and upload. Idle
connections wait here instead, one list per trove, for whichever thread asks
next.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time

# Well under the trove's own idle timeout (300 s by default), so that a kept
# connection is seldom one the trove has just closed.
IDLE_SECONDS = 60.0
MAX_IDLE = 8


class NoDelayConnection(http.client.HTTPConnection):
    """HTTP with Nagle's algorithm off.

    An upload goes out as several writes (headers, manifest, then files), and
    a small write after an unacknowledged one would wait for the server's
    delayed ACK (about 40 ms on Linux).
    """

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Pool:
    """Idle connections by (host, port); take one, give it back once its answer is read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, int], list[tuple[NoDelayConnection, float]]] = {}

    def take(self, host: str, port: int, timeout: float,
             blocksize: int) -> tuple[NoDelayConnection, bool]:
        """A connection to host:port, and whether it was kept from an earlier request."""
        now = time.monotonic()
        stale = []
        conn = None
        with self._lock:
            idle = self._idle.get((host, port), [])
            while idle:
                candidate, since = idle.pop()
                if now - since < IDLE_SECONDS:
                    conn = candidate
                    break
                stale.append(candidate)
        for old in stale:
            old.close()
        if conn is None:
            return NoDelayConnection(host, port, timeout=timeout, blocksize=blocksize), False
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn, True

    def give(self, conn: http.client.HTTPConnection,
             resp: http.client.HTTPResponse) -> None:
        """Keep `conn` for the next request, its answer `resp` read to the end (or close it)."""
        if resp.will_close or not resp.isclosed() or conn.sock is None:
            conn.close()
            return
        now = time.monotonic()
        with self._lock:
            idle = self._idle.get((conn.host, conn.port), [])
            keep = [(c, t) for c, t in idle if now - t < IDLE_SECONDS] + [(conn, now)]
            drop = [c for c, t in idle if now - t >= IDLE_SECONDS]
            drop += [c for c, _ in keep[:-MAX_IDLE]]
            self._idle[(conn.host, conn.port)] = keep[-MAX_IDLE:]
        for old in drop:
            old.close()

    def forget(self) -> None:
        """Drop every idle connection without closing it (in a forked child: they are
        the parent's)."""
        self._lock = threading.Lock()
        self._idle = {}


POOL = Pool()
os.register_at_fork(after_in_child=POOL.forget)

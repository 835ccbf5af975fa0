"""A loopback TCP proxy that drops each connection after so many bytes (a peer that dies),
or passes the client's bytes slowly (a long transfer)."""

from __future__ import annotations

import socket
import threading
import time


class CuttingProxy:
    """Forwards 127.0.0.1:port to `target`, closing both ends once the client has sent
    `cut_after` bytes: to the client it looks like a server that died mid-transfer."""

    def __init__(self, target_port: int, cut_after: float = float("inf"),
                 upstream_rate: float | None = None, downstream_cut_after: float = float("inf"),
                 downstream_rate: float | None = None):
        self.target_port = target_port
        self.cut_after = cut_after
        self.upstream_rate = upstream_rate  # bytes per second from the client, if limited
        # The same two for what the server sends (a download cut short, or slow).
        self.downstream_cut_after = downstream_cut_after
        self.downstream_rate = downstream_rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                cut = self.cut_after if upstream else self.downstream_cut_after
                rate = self.upstream_rate if upstream else self.downstream_rate
                if sent + len(data) > cut:
                    self.cuts += 1
                    break
                if rate:
                    time.sleep(len(data) / rate)
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            _shut(s)
            s.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()


class DroppingProxy:
    """Forwards 127.0.0.1:port to `target` until told to drop every connection it carries
    (a link that breaks while both ends live); it goes on accepting new ones."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            with self.lock:
                self.open += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            _shut(s)

    def drop(self) -> int:
        """Cut every connection now; how many there were."""
        with self.lock:
            dropped, self.open = self.open, []
        for s in dropped:
            _shut(s)
            s.close()
        return len(dropped) // 2

    def close(self) -> None:
        self.listener.close()
        self.drop()


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass

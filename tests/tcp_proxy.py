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
                 upstream_rate: float | None = None):
        self.target_port = target_port
        self.cut_after = cut_after
        self.upstream_rate = upstream_rate  # bytes per second from the client, if limited
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
                if upstream and sent + len(data) > self.cut_after:
                    self.cuts += 1
                    break
                if upstream and self.upstream_rate:
                    time.sleep(len(data) / self.upstream_rate)
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()

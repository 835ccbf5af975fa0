"""A VM host stand-in for tests: a paramiko SSH server on 127.0.0.1 that serves SFTP.

It serves this machine's filesystem, as sftp-server on a real host would,
to one user authenticated by public key.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from paramiko.sftp import SFTP_FAILURE, SFTP_OK


class _Handle(paramiko.SFTPHandle):
    def stat(self):
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))

    def chattr(self, attr):
        # SFTPFile.truncate() arrives here as FSETSTAT with a size.
        if attr.st_size is not None:
            os.ftruncate(self.writefile.fileno(), attr.st_size)
        return SFTP_OK


class _Filesystem(paramiko.SFTPServerInterface):
    def __init__(self, server, *args, **kwargs):
        super().__init__(server, *args, **kwargs)
        self.owner = server.owner

    def open(self, path, flags, attr):
        mode = getattr(attr, "st_mode", None) or 0o644
        try:
            fd = os.open(path, flags, mode)
            if self.owner and flags & os.O_CREAT:
                os.fchown(fd, *self.owner)
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        writable = flags & (os.O_WRONLY | os.O_RDWR)
        fobj = os.fdopen(fd, ("r+b" if flags & os.O_RDWR else "wb") if writable else "rb")
        handle = _Handle(flags)
        handle.filename = path
        handle.readfile = fobj
        handle.writefile = fobj if writable else None
        return handle

    def stat(self, path):
        return self._attrs(os.stat, path)

    def lstat(self, path):
        return self._attrs(os.lstat, path)

    def remove(self, path):
        try:
            os.remove(path)
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        return SFTP_OK

    def canonicalize(self, path):
        return os.path.normpath(path if path.startswith("/") else "/" + path)

    def rename(self, oldpath, newpath):
        return SFTP_FAILURE

    @staticmethod
    def _attrs(fn, path):
        try:
            return paramiko.SFTPAttributes.from_stat(fn(path))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)


class _Server(paramiko.ServerInterface):
    def __init__(self, user: str, key: paramiko.PKey, owner: tuple[int, int] | None):
        self.user, self.key, self.owner = user, key, owner

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        if username == self.user and key == self.key:
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


@dataclass
class SSHHost:
    """A running SSH server; `home` holds a client key and known_hosts that trust it."""

    home: Path
    user: str
    port: int
    _sock: socket.socket
    _transports: list[paramiko.Transport] = field(default_factory=list)
    _thread: threading.Thread | None = None
    connections: int = 0
    owner: tuple[int, int] | None = None

    @classmethod
    def start(cls, home: Path, user: str = "deployer",
              owner: tuple[int, int] | None = None) -> SSHHost:
        """Make keys under `home`/.ssh, listen on 127.0.0.1, serve in a thread.

        `owner` (uid, gid) owns the files clients make, as the login user
        would on a real host (a libvirt session daemon of that user reads them).
        """
        ssh = home / ".ssh"
        ssh.mkdir(parents=True, mode=0o700)
        host_key = paramiko.ECDSAKey.generate()
        client_key = paramiko.ECDSAKey.generate()
        client_key.write_private_key_file(str(ssh / "id_ecdsa"))
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        (ssh / "known_hosts").write_text(
            f"[127.0.0.1]:{port} {host_key.get_name()} {host_key.get_base64()}\n")
        host = cls(home, user, port, sock, owner=owner)
        host._thread = threading.Thread(target=host._serve, args=(host_key, client_key),
                                        daemon=True)
        host._thread.start()
        return host

    def _serve(self, host_key: paramiko.PKey, client_key: paramiko.PKey) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            transport = paramiko.Transport(conn)
            transport.add_server_key(host_key)
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _Filesystem)
            self._transports.append(transport)
            try:
                transport.start_server(server=_Server(self.user, client_key, self.owner))
            except (paramiko.SSHException, EOFError, OSError):
                # A client that rejects our host key hangs up mid-handshake.
                transport.close()

    def stop(self) -> None:
        """Stop listening and close every connection."""
        # shutdown() wakes the thread blocked in accept(); close() alone may not.
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for transport in self._transports:
            transport.close()
        if self._thread:
            self._thread.join(timeout=10)

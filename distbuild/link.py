"""The client end of a distbuild link: paramiko SSH to the controller, then JSON lines.

Workers and initiators both use it. The controller's host key is checked
against known_hosts strictly (an unknown or changed key is refused with its
fingerprint and the line to add); the client authenticates with its own key;
the channel is the SSH subsystem `distbuild`. Pings from the controller are
answered here, and a link silent for longer than `dead_after` is declared dead.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from distbuild import __version__
from distbuild.errors import DistbuildError
from distbuild.protocol import PROTOCOL_VERSION, Message, ProtocolError, decode, encode
from distbuild.protocol.messages import Hello, Ping, Pong, Refused, Welcome
from distbuild.ssh import PublicKey, check_host_key, quiet_paramiko

paramiko = quiet_paramiko()

SUBSYSTEM = "distbuild"
HEARTBEAT_SECONDS = 3.0
# The controller pings every 3 s, so 8 s of silence means the link is gone.
DEAD_AFTER_SECONDS = 8.0


class LinkError(DistbuildError):
    """The link to the controller could not be made or was lost."""


class Link:
    """A connected, authenticated link; `send` is thread-safe, `receive` is for one reader."""

    def __init__(self, transport: paramiko.Transport, channel: paramiko.Channel, peer: str,
                 dead_after: float = DEAD_AFTER_SECONDS):
        self.transport = transport
        self.channel = channel
        self.peer = peer
        self.dead_after = dead_after
        self._buffer = b""
        self._send_lock = threading.Lock()
        self._last_heard = time.monotonic()
        self._ping_seq = 0
        # The controller's Welcome, once the handshake is done.
        self.welcome: Welcome | None = None

    def send(self, message: Message) -> None:
        self.send_many([message])

    def send_many(self, messages: list[Message]) -> None:
        """Send `messages` in order with one write (one SSH packet when they fit in one)."""
        data = b"".join(encode(message) for message in messages)
        with self._send_lock:
            try:
                self.channel.sendall(data)
            except (OSError, EOFError, paramiko.SSHException) as e:
                raise LinkError(f"link lost while sending: {e}", self.peer,
                                retryable=True) from None

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message other than heartbeats; None if `timeout` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line, self._buffer = self._buffer[:newline], self._buffer[newline + 1:]
                message = decode(line, self.peer)
                if isinstance(message, Ping):
                    self.send(Pong(seq=message.seq))
                    continue
                if isinstance(message, Pong):
                    continue
                return message
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            wait = min(1.0, self.dead_after) if deadline is None else max(
                0.0, min(1.0, deadline - now))
            ready, _, _ = select.select([self.channel], [], [], wait)
            if not ready:
                # Silence is judged only with nothing left unread: lines that waited
                # while nobody read (during a long push) are signs of life too.
                if time.monotonic() - self._last_heard > self.dead_after:
                    self.close()
                    raise LinkError(f"no word from the controller for "
                                    f"{self.dead_after:.0f} s; the link is dead", self.peer,
                                    retryable=True)
                # Our own ping keeps a quiet but healthy link provably alive.
                if now - self._last_heard > HEARTBEAT_SECONDS:
                    self._ping_seq += 1
                    self.send(Ping(seq=self._ping_seq))
                continue
            try:
                chunk = self.channel.recv(65536)
            except (OSError, paramiko.SSHException) as e:
                raise LinkError(f"link lost: {e}", self.peer, retryable=True) from None
            if not chunk:
                raise LinkError("the controller closed the link", self.peer, retryable=True)
            self._last_heard = time.monotonic()
            self._buffer += chunk

    @contextlib.contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Ping the controller from a thread while the caller does something long.

        For work done between messages (pushing the definitions): nobody reads
        the link then, and the controller would take the silence for a dead link.
        """
        done = threading.Event()

        def beat() -> None:
            while not done.wait(HEARTBEAT_SECONDS):
                try:
                    self._ping_seq += 1
                    self.send(Ping(seq=self._ping_seq))
                except LinkError:
                    return

        thread = threading.Thread(target=beat, name="link-keepalive", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def close(self) -> None:
        try:
            self.channel.close()
        finally:
            self.transport.close()


def connect(host: str, port: int, identity: Path, known_hosts: Path, role: str, name: str,
            timeout: float = 15.0, dead_after: float = DEAD_AFTER_SECONDS) -> Link:
    """Open a link to the controller as `role` named `name`, and do the version handshake."""
    peer = f"controller {host}:{port}"
    key = _load_identity(identity)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise LinkError(f"cannot connect: {e.strerror or e}", peer, retryable=True) from None
    # Messages are small and often come in pairs (last output, then job-finished):
    # with Nagle's algorithm the second waits ~40 ms for the peer's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock)
    try:
        try:
            transport.start_client(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            if "banner" in str(e):
                # Retryable: a controller that is starting or stopping may drop a
                # connection before its banner too.
                raise LinkError("no SSH server answers on this port, so it is not the "
                                "controller's initiator or worker port (an HTTP or git "
                                "port?)", peer, retryable=True) from None
            raise LinkError(f"SSH handshake failed: {e}", peer, retryable=True) from None
        offered = transport.get_remote_server_key()
        check_host_key(known_hosts, host, port, PublicKey(offered.get_name(), offered.asbytes()))
        try:
            transport.auth_publickey(name, key)
        except paramiko.AuthenticationException:
            raise LinkError(f"the controller refused this {role} key ({identity}, "
                            f"{key.fingerprint}); add its .pub line to the controller's "
                            f"{role} authorized keys", peer) from None
        except (paramiko.SSHException, OSError) as e:
            raise LinkError(f"authentication failed: {e}", peer, retryable=True) from None
        try:
            channel = transport.open_session(timeout=timeout)
            channel.invoke_subsystem(SUBSYSTEM)
        except (paramiko.SSHException, OSError, EOFError):
            raise LinkError("the SSH server on this port does not serve distbuild links, so "
                            "it is not the controller (the trove's SSH port?)", peer,
                            retryable=True) from None
        link = Link(transport, channel, peer, dead_after)
        link.send(Hello(protocol=PROTOCOL_VERSION, role=role, name=name,
                        software=f"distbuild {__version__}"))
        answer = link.receive(timeout=timeout)
        if isinstance(answer, Refused):
            raise LinkError(f"refused: {answer.reason}", peer)
        if not isinstance(answer, Welcome):
            raise ProtocolError(f"expected welcome, got {answer.type if answer else 'nothing'}",
                                peer)
        link.welcome = answer
        return link
    except BaseException:
        transport.close()
        raise


def _load_identity(path: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(str(path))
    except FileNotFoundError:
        raise LinkError("identity (private key) file does not exist", str(path)) from None
    except (paramiko.SSHException, ValueError, OSError) as e:
        raise LinkError(f"cannot load private key: {e}", str(path)) from None


def worth_retrying(error: LinkError) -> bool:
    """For a client that had a link: may trying again help? (A controller starting up
    can take a connection before it answers, which looks like a port without SSH.)"""
    return error.retryable or "no SSH server answers" in error.what

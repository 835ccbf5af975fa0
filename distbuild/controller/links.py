"""The controller's end of the links: a conch SSH server per role, JSON lines per channel.

Initiators and workers connect to different ports, each admitting only the
keys in its own authorized-keys file. An authenticated client may open the
`distbuild` subsystem and nothing else (no shell, no exec). The first line on
a channel must be a Hello with our protocol version; any other version gets
a Refused that names both versions, and the channel closes.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.ssh import connection, factory, session
from twisted.cred import portal
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python import components
from zope.interface import implementer

from distbuild import ssh
from distbuild.errors import DistbuildError
from distbuild.protocol import PROTOCOL_VERSION, Message, ProtocolError, decode, encode
from distbuild.protocol.codec import MAX_LINE
from distbuild.protocol.messages import TROVE_FIELDS, Hello, Ping, Pong, Refused, Welcome

SUBSYSTEM = b"distbuild"
HEARTBEAT_SECONDS = 3.0
# Checked every second, so a dead link is noticed at most 9 s after it went quiet.
DEAD_AFTER_SECONDS = 8.0


class LinkHandler(Protocol):
    """What the controller provides to its links."""

    name: str

    def link_opened(self, link: LinkProtocol) -> str | None:
        """Accept a link after its Hello, or return why it is refused."""

    def message_received(self, link: LinkProtocol, message: Message) -> None: ...

    def link_closed(self, link: LinkProtocol, reason: str) -> None: ...


class Heartbeats:
    """One timer for every open link of a port: a link's own timer would cost a reactor
    call each second for each of a farm's hundreds of workers.

    Each tick beats a tenth of the links, so each link beats once a second and the
    pings of links that connected together do not all leave in one reactor turn.
    """

    SLICES = 10

    def __init__(self, clock: IReactorTime):
        self.links: dict[LinkProtocol, None] = {}
        self._turn = 0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = clock

    def add(self, link: LinkProtocol) -> None:
        self.links[link] = None
        if not self._loop.running:
            self._loop.start(1.0 / self.SLICES, now=False)

    def discard(self, link: LinkProtocol) -> None:
        self.links.pop(link, None)
        if not self.links and self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        self._turn = (self._turn + 1) % self.SLICES
        for link in list(self.links)[self._turn::self.SLICES]:
            link.beat()


class LinkProtocol(TwistedProtocol):
    """One client on one channel: handshake, heartbeats, then messages to the handler.

    Lines are split here rather than by LineOnlyReceiver, which needs a
    `disconnecting` attribute that conch's subsystem transport does not have.
    """

    MAX_LENGTH = MAX_LINE

    def __init__(self, role: str, handler: LinkHandler, user: str, clock: IReactorTime,
                 dead_after: float = DEAD_AFTER_SECONDS,
                 trove: Mapping[str, str] | None = None,
                 heartbeats: Heartbeats | None = None):
        self.role = role
        self.trove = dict(trove or {})
        self.handler = handler
        self.user = user
        self.clock = clock
        self.dead_after = dead_after
        self.hello: Hello | None = None
        self.open = False
        self._last_heard = 0.0
        self._seq = 0
        self._heartbeats = heartbeats or Heartbeats(clock)
        self._closed_reason = "link closed"
        self._buffer = b""
        self._out: list[bytes] = []  # encoded, for the end of this reactor turn
        self._closing = False
        self.connected_at = 0.0  # wall-clock time, for farm views
        self.labels: list[str] = []  # a worker's, from its worker-ready

    @property
    def last_heard(self) -> float:
        """When the peer last sent anything (a heartbeat at least every few seconds)."""
        return self._last_heard

    @property
    def peer(self) -> str:
        name = self.hello.name if self.hello else self.user
        return f"{self.role} {name}"

    def connectionMade(self) -> None:
        self._last_heard = self.clock.seconds()
        self.connected_at = time.time()
        self._last_ping = self._last_heard
        self._heartbeats.add(self)

    def beat(self) -> None:
        """Called every second: ping the peer now and then, close the link if it went quiet."""
        now = self.clock.seconds()
        if now - self._last_heard > self.dead_after:
            self.close(f"no heartbeat for {self.dead_after:.0f} s")
            return
        if now - self._last_ping >= HEARTBEAT_SECONDS:
            self._last_ping = now
            self._seq += 1
            self.send(Ping(seq=self._seq))

    def dataReceived(self, data: bytes) -> None:
        self._last_heard = self.clock.seconds()
        self._buffer += data
        while self.transport is not None and not self._closing:
            line, newline, rest = self._buffer.partition(b"\n")
            if not newline:
                if len(self._buffer) > self.MAX_LENGTH:
                    self.refuse(f"message of more than {self.MAX_LENGTH} bytes")
                return
            self._buffer = rest
            self.lineReceived(line)

    def lineReceived(self, line: bytes) -> None:
        try:
            message = decode(line, self.peer)
        except ProtocolError as e:
            self.refuse(str(e))
            return
        if isinstance(message, Ping):
            self.send(Pong(seq=message.seq))
            return
        if isinstance(message, Pong):
            return
        if self.hello is None:
            self._handshake(message)
            return
        try:
            self.handler.message_received(self, message)
        except DistbuildError as e:
            self.refuse(str(e))

    def _handshake(self, message: Message) -> None:
        if not isinstance(message, Hello):
            self.refuse(f"expected hello first, got {message.type}")
            return
        if message.protocol != PROTOCOL_VERSION:
            self.refuse(f"protocol version {message.protocol} is not supported; this "
                        f"controller speaks version {PROTOCOL_VERSION} "
                        f"(client: {message.software or 'unknown'})")
            return
        if message.role != self.role:
            self.refuse(f"this port is for {self.role}s, not {message.role}s")
            return
        self.hello = message
        why = self.handler.link_opened(self)
        if why:
            self.refuse(why)
            return
        self.open = True
        self.send(Welcome(protocol=PROTOCOL_VERSION, controller=self.handler.name,
                          **self.trove))

    def send(self, message: Message) -> None:
        if self.transport is None:
            return
        if not self._out:
            # Sent together at the end of this reactor turn: the messages of one step
            # to an initiator (ready, started, finished, progress) share an SSH packet.
            self.clock.callLater(0, self._flush)
        self._out.append(encode(message))

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def refuse(self, reason: str) -> None:
        self.send(Refused(reason=reason))
        self.close(f"refused: {reason}")

    def close(self, reason: str) -> None:
        self._closed_reason = reason
        self._closing = True
        self._flush()
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self._heartbeats.discard(self)
        if self.open:
            self.open = False
            self.handler.link_closed(self, self._closed_reason)


@implementer(ISession)
class _NoShell:
    """Refuses shells, commands and terminals: the link subsystem is all there is."""

    def __init__(self, avatar: LinkAvatar):
        self.avatar = avatar

    def _refuse(self, proto) -> None:
        from twisted.internet import reactor

        reactor.callLater(0, _refuse, proto.session,
                          "distbuild controller: only the distbuild subsystem is served\n")

    def execCommand(self, proto, command: bytes) -> None:
        self._refuse(proto)

    def openShell(self, proto) -> None:
        self._refuse(proto)

    def getPty(self, term, window_size, modes) -> None:
        raise DistbuildError("no terminals on the controller")

    def windowChanged(self, new_window_size) -> None:
        pass

    def eofReceived(self) -> None:
        pass

    def closed(self) -> None:
        pass


def _refuse(channel, message: str) -> None:
    channel.writeExtended(connection.EXTENDED_DATA_STDERR, message.encode())
    channel.conn.sendRequest(channel, b"exit-status", struct.pack(">L", 1))
    channel.loseConnection()


class LinkAvatar(ConchUser):
    """An authenticated client: may open session channels for the distbuild subsystem only."""

    def __init__(self, user: str, make_protocol: Callable[[str], LinkProtocol]):
        super().__init__()
        self.user = user
        self.channelLookup[b"session"] = session.SSHSession
        self.subsystemLookup[SUBSYSTEM] = lambda data, avatar: make_protocol(self.user)


@implementer(portal.IRealm)
class LinkRealm:
    def __init__(self, make_protocol: Callable[[str], LinkProtocol]):
        self.make_protocol = make_protocol

    def requestAvatar(self, avatar_id, mind, *interfaces):
        if IConchUser not in interfaces:
            raise NotImplementedError("only SSH users")
        user = avatar_id.decode() if isinstance(avatar_id, bytes) else str(avatar_id)
        return IConchUser, LinkAvatar(user, self.make_protocol), lambda: None


components.registerAdapter(_NoShell, LinkAvatar, ISession)


def link_factory(role: str, handler: LinkHandler, host_key: Path, authorized_keys: Path,
                 clock: IReactorTime, dead_after: float = DEAD_AFTER_SECONDS,
                 trove: Mapping[str, str] | None = None) -> factory.SSHFactory:
    """An SSH server for one role, admitting exactly the keys in `authorized_keys`.

    `trove` (keys of TROVE_FIELDS) goes into every Welcome, so that clients learn
    where the network's trove is from the controller.
    """
    key = ssh.load_host_key(host_key)
    ssh.read_authorized_keys(authorized_keys)  # a missing or broken file fails at start-up
    announced = {k: v for k, v in (trove or {}).items() if k in TROVE_FIELDS and v}
    heartbeats = Heartbeats(clock)

    def make_protocol(user: str) -> LinkProtocol:
        return LinkProtocol(role, handler, user, clock, dead_after, announced, heartbeats)

    f = factory.SSHFactory()
    f.protocol = ssh.server_transport()
    f.portal = ssh.make_portal(LinkRealm(make_protocol), authorized_keys)
    f.publicKeys = {key.sshType(): key.public()}
    f.privateKeys = {key.sshType(): key}
    return f

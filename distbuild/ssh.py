"""SSH keys for the whole network: key pairs, authorized-keys files, known_hosts, conch glue.

Keys are written in OpenSSH format so that `ssh`, `git` and paramiko read them
too; private keys are created mode 0600 from the start (never chmod-ed after).
Host keys are checked strictly: an unknown or changed host key is a HostKeyError
that shows the fingerprint and the exact known_hosts line to add.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from distbuild.errors import DistbuildError


class SSHKeyError(DistbuildError):
    """A key file, authorized-keys file or known_hosts file is missing or malformed."""


class HostKeyError(DistbuildError):
    """A peer's host key is unknown or differs from the one in known_hosts."""


@dataclass(frozen=True)
class PublicKey:
    """An SSH public key: its type (e.g. ssh-ed25519), wire-format blob and comment."""

    type: str
    blob: bytes
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        """The key's SHA256 fingerprint as OpenSSH prints it."""
        return fingerprint(self.blob)

    def line(self) -> str:
        """The key as one authorized_keys / .pub line."""
        text = f"{self.type} {base64.b64encode(self.blob).decode()}"
        return f"{text} {self.comment}" if self.comment else text


def fingerprint(blob: bytes) -> str:
    """`SHA256:...` of a public key blob, as `ssh-keygen -l` shows it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_public_key(text: str, where: str) -> PublicKey:
    """A public key from `TYPE BASE64 [COMMENT]`; SSHKeyError naming `where` otherwise."""
    parts = text.strip().split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise SSHKeyError("expected 'TYPE BASE64-KEY [COMMENT]'", where)
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise SSHKeyError("key is not valid base64", where) from None
    return PublicKey(parts[0], blob, parts[2] if len(parts) > 2 else "")


def generate_keypair(private_path: Path, comment: str = "") -> PublicKey:
    """Write a new Ed25519 key pair: PATH (mode 0600) and PATH.pub; returns the public key."""
    private_path = Path(private_path)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_path.with_name(f".{private_path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    os.replace(tmp, private_path)
    pub = parse_public_key(f"{public} {comment}".strip(), str(private_path) + ".pub")
    Path(str(private_path) + ".pub").write_text(pub.line() + "\n")
    return pub


def public_key_of(private_path: Path) -> PublicKey:
    """The public half of an OpenSSH private key file."""
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(private_path).read_bytes()
    except OSError as e:
        raise SSHKeyError(f"cannot read private key: {e.strerror}", str(private_path)) from None
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SSHKeyError(f"not an unencrypted OpenSSH private key: {e}",
                          str(private_path)) from None
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
    return parse_public_key(line, str(private_path))


def read_authorized_keys(path: Path) -> list[PublicKey]:
    """Keys in an authorized-keys file (options before the key type are not supported)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise SSHKeyError(f"cannot read authorized keys: {e.strerror}", str(path)) from None
    keys = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            keys.append(parse_public_key(line, f"{path}:{number}"))
    return keys


def host_pattern(host: str, port: int) -> str:
    """How known_hosts names host:port (`[host]:port` unless port 22)."""
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_line(host: str, port: int, key: PublicKey) -> str:
    """The known_hosts line that trusts `key` for host:port."""
    return f"{host_pattern(host, port)} {key.type} {base64.b64encode(key.blob).decode()}"


def _host_matches(field: str, pattern: str) -> bool:
    for name in field.split(","):
        if name.startswith("|1|"):
            try:
                salt_b64, digest_b64 = name[3:].split("|")
                salt = base64.b64decode(salt_b64)
                digest = base64.b64decode(digest_b64)
            except ValueError:
                continue
            if hmac.compare_digest(hmac.new(salt, pattern.encode(), "sha1").digest(), digest):
                return True
        elif name == pattern:
            return True
    return False


def known_keys(known_hosts: Path, host: str, port: int) -> list[PublicKey]:
    """Keys known_hosts trusts for host:port (plain or hashed names)."""
    pattern = host_pattern(host, port)
    try:
        lines = Path(known_hosts).read_text().splitlines()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise SSHKeyError(f"cannot read known_hosts: {e.strerror}", str(known_hosts)) from None
    found = []
    for number, line in enumerate(lines, 1):
        parts = line.split(None, 1)
        if len(parts) == 2 and not line.startswith(("#", "@")) and _host_matches(parts[0],
                                                                                 pattern):
            found.append(parse_public_key(parts[1], f"{known_hosts}:{number}"))
    return found


def check_host_key(known_hosts: Path, host: str, port: int, key: PublicKey) -> None:
    """Return if known_hosts trusts `key` for host:port; HostKeyError saying how otherwise."""
    trusted = known_keys(known_hosts, host, port)
    if any(k.type == key.type and k.blob == key.blob for k in trusted):
        return
    where = host_pattern(host, port)
    if any(k.type == key.type for k in trusted):
        raise HostKeyError(
            f"HOST KEY CHANGED: {known_hosts} expects another {key.type} key, the peer "
            f"offers {key.fingerprint}; if the change is expected, replace its line with: "
            f"{known_hosts_line(host, port, key)}", where)
    raise HostKeyError(
        f"unknown host key {key.type} {key.fingerprint} (not in {known_hosts}); if you "
        f"trust it, add this line to {known_hosts}: {known_hosts_line(host, port, key)}",
        where)


def quiet_paramiko():
    """paramiko, with its logger kept from printing tracebacks of its own threads.

    Every failure paramiko logs also reaches the caller as an exception, which
    becomes one line naming the peer; the log records would only add a traceback.
    """
    import logging
    import sys

    # paramiko imports `invoke` (a third of its import time) only to run
    # ssh_config's `Match exec`; distbuild never reads an ssh_config, and every
    # initiator command pays the import before its first byte.
    sys.modules.setdefault("invoke", None)
    import paramiko

    logger = logging.getLogger("paramiko")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
    return paramiko


def fetch_host_key(host: str, port: int, timeout: float = 10.0) -> PublicKey:
    """The host key an SSH server at host:port offers (no authentication is attempted)."""
    paramiko = quiet_paramiko()

    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise HostKeyError(f"cannot connect: {e.strerror or e}", f"{host}:{port}",
                           retryable=True) from None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return PublicKey(key.get_name(), key.asbytes())
    except (paramiko.SSHException, OSError) as e:
        raise HostKeyError(f"SSH handshake failed: {e}", f"{host}:{port}",
                           retryable=True) from None
    finally:
        transport.close()


def git_ssh_command(identity: Path, known_hosts: Path) -> str:
    """GIT_SSH_COMMAND that uses only `identity` and checks host keys strictly."""
    import shlex

    return " ".join(shlex.quote(a) for a in [
        "ssh", "-i", str(identity), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR"])


# --- twisted.conch server glue ------------------------------------------------


def load_host_key(path: Path, create: bool = True):
    """The conch Key in an OpenSSH private key file, generating an Ed25519 key if absent."""
    from twisted.conch.ssh import keys

    path = Path(path)
    if not path.exists() and create:
        generate_keypair(path, "distbuild-host")
    try:
        return keys.Key.fromFile(str(path))
    except (OSError, keys.BadKeyError) as e:
        raise SSHKeyError(f"cannot load host key: {e}", str(path)) from None


class AuthorizedKeysFile:
    """conch IAuthorizedKeysDB over one authorized-keys file, re-read on every login."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def getAuthorizedKeys(self, username):
        from twisted.conch.ssh import keys

        out = []
        for key in read_authorized_keys(self.path):
            try:
                out.append(keys.Key.fromString(key.line().encode()))
            except keys.BadKeyError:
                continue
        return out


# Signature algorithms conch verifies for a client's key. conch's server names its
# host key types in server-sig-algs instead, so a client with an RSA key (paramiko,
# OpenSSH) would find no algorithm it may sign with and give up.
CLIENT_SIGNATURE_ALGORITHMS = (b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384",
                               b"ecdsa-sha2-nistp521", b"rsa-sha2-512", b"rsa-sha2-256")


@functools.cache
def server_transport():
    """The conch server transport every distbuild SSH server uses.

    It announces the client signature algorithms it accepts, and turns Nagle's
    algorithm off: messages are small and come in bursts, and each would
    otherwise wait about 40 ms for the peer's delayed ACK.
    """
    from twisted.conch.ssh import transport

    class ServerTransport(transport.SSHServerTransport):
        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)
            super().connectionMade()

        def sendExtInfo(self, extensions) -> None:
            super().sendExtInfo([
                (name, b",".join(CLIENT_SIGNATURE_ALGORITHMS)
                 if name == b"server-sig-algs" else value) for name, value in extensions])

    return ServerTransport


def make_portal(realm, authorized_keys: Path):
    """A portal that lets in exactly the keys in `authorized_keys` (any user name)."""
    from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
    from twisted.cred import portal
    from zope.interface import declarations

    db = AuthorizedKeysFile(authorized_keys)
    declarations.alsoProvides(db, IAuthorizedKeysDB)
    p = portal.Portal(realm)
    p.registerChecker(SSHPublicKeyChecker(db))
    return p

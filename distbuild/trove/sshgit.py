"""Authenticated git over SSH (twisted.conch): the only way to write to the trove.

A client whose public key is in the authorized-keys file may run exactly two
commands: `git-receive-pack '/NAME'` (creating bare repository NAME on its
first push) and `git-upload-pack '/NAME'`. Anything else (a shell, a pty,
another command, a name with `..`) is refused with a message on stderr and
exit status 1, never run.
"""

from __future__ import annotations

import os
import shlex
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import ISession
from twisted.conch.ssh import connection, factory, session
from twisted.cred import portal
from twisted.python import components
from zope.interface import implementer

from distbuild import ssh
from distbuild.errors import TroveError
from distbuild.trove import names

GIT_COMMANDS = {"git-receive-pack", "git-upload-pack"}


def repo_path(git_dir: Path, name: str) -> Path:
    """Where bare repository NAME lives under git_dir (NAME validated first)."""
    return Path(git_dir) / f"{names.check_repo_name(name)}.git"


def parse_command(command: str) -> tuple[str, str]:
    """(git command, repository name) from an exec request; TroveError if not allowed."""
    try:
        words = shlex.split(command)
    except ValueError:
        raise TroveError("cannot parse command", command[:80]) from None
    if len(words) == 3 and words[0] == "git" and f"git-{words[1]}" in GIT_COMMANDS:
        words = [f"git-{words[1]}", words[2]]
    if len(words) != 2 or words[0] not in GIT_COMMANDS:
        raise TroveError("only git-receive-pack and git-upload-pack may run here",
                         command[:80])
    return words[0], names.check_repo_name(words[1])


class GitAvatar(ConchUser):
    """A logged-in pusher: may open session channels and nothing else."""

    def __init__(self, git_dir: Path, log: Callable[[str], None]):
        super().__init__()
        self.git_dir = Path(git_dir)
        self.log = log
        self.channelLookup[b"session"] = session.SSHSession


@implementer(portal.IRealm)
class GitRealm:
    """Gives every authenticated key a GitAvatar over the trove's git directory."""

    def __init__(self, git_dir: Path, log: Callable[[str], None]):
        self.git_dir = Path(git_dir)
        self.log = log

    def requestAvatar(self, avatar_id, mind, *interfaces):
        avatar = GitAvatar(self.git_dir, self.log)
        return interfaces[0], avatar, lambda: None


@implementer(ISession)
class GitSession:
    """One session channel: runs one allowed git command or refuses."""

    def __init__(self, avatar: GitAvatar):
        self.avatar = avatar
        self.process = None

    def execCommand(self, proto, command: bytes) -> None:
        from twisted.internet import reactor

        text = command.decode("utf-8", "replace")
        try:
            program, name = parse_command(text)
            path = repo_path(self.avatar.git_dir, name)
            if program == "git-receive-pack" and not path.exists():
                _create_bare(path)
                self.avatar.log(f"created repository {name}")
            elif not path.exists():
                raise TroveError("no such repository", name)
        except TroveError as e:
            self.avatar.log(f"refused ssh command {text[:80]!r}: {e}")
            # After the exec request is answered, so the client reads the reason.
            reactor.callLater(0, _refuse, proto.session, f"distbuild trove: {e}\n")
            return
        self.avatar.log(f"{program} {name}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        self.process = reactor.spawnProcess(proto, "git", ["git", program[4:], str(path)],
                                            env=env, path=str(self.avatar.git_dir))

    def getPty(self, term, windowSize, modes):
        raise TroveError("no terminals on the trove")

    def openShell(self, proto):
        from twisted.internet import reactor

        reactor.callLater(0, _refuse, proto.session,
                          "distbuild trove: no shell here; use git push or git fetch\n")

    def windowChanged(self, newWindowSize):
        pass

    def eofReceived(self):
        if self.process is not None:
            self.process.closeStdin()

    def closed(self):
        if self.process is not None and self.process.pid is not None:
            try:
                self.process.signalProcess("TERM")
            except OSError:
                pass


components.registerAdapter(GitSession, GitAvatar, ISession)


def _refuse(channel, message: str) -> None:
    channel.writeExtended(connection.EXTENDED_DATA_STDERR, message.encode())
    channel.conn.sendRequest(channel, b"exit-status", struct.pack(">L", 1))
    channel.loseConnection()


def _create_bare(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True, env=env,
                   capture_output=True)


class GitSSHFactory(factory.SSHFactory):
    """SSH server factory of the trove: Ed25519 host key, keys from one authorized-keys file."""


def make_factory(git_dir: Path, authorized_keys: Path, host_key: Path,
                 log: Callable[[str], None]) -> GitSSHFactory:
    """The SSH server of the trove, ready for listenTCP."""
    key = ssh.load_host_key(host_key)
    f = GitSSHFactory()
    f.protocol = ssh.server_transport()
    f.portal = ssh.make_portal(GitRealm(git_dir, log), authorized_keys)
    f.publicKeys = {key.sshType(): key.public()}
    f.privateKeys = {key.sshType(): key}
    return f

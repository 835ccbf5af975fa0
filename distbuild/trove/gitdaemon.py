"""The real `git daemon`, serving every bare repository under the git directory read-only.

Supervised: if it dies it is started again (after a short, growing pause so a
daemon that cannot start does not spin), and it is stopped with the trove. It
asks the kernel to kill it if the trove process dies without stopping it, so a
SIGKILLed trove leaves no daemon holding the port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from twisted.application import service
from twisted.internet import defer, protocol

from distbuild.errors import TroveError

# Runs in the child before exec: PR_SET_PDEATHSIG (1) makes the kernel send
# SIGTERM to git daemon when the trove goes away, however it goes.
_EXEC_WITH_PDEATHSIG = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


def daemon_program() -> str:
    """The git-daemon program itself.

    `git daemon` runs git-daemon as a child and waits; supervising (and killing)
    that wrapper would orphan the real daemon, so we run git-daemon directly.
    """
    proc = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=False)
    program = Path(proc.stdout.strip()) / "git-daemon"
    if proc.returncode != 0 or not os.access(program, os.X_OK):
        raise TroveError("git-daemon not found (is git installed?)", str(program))
    return str(program)


def daemon_argv(git_dir: Path, address: str, port: int) -> list[str]:
    """The git daemon command line: read-only, every repository, only on `address`."""
    return [
        daemon_program(), "--reuseaddr", "--export-all", "--informative-errors",
        f"--base-path={git_dir}", f"--listen={address}", f"--port={port}",
        # Receive-pack stays disabled (the default): writes go over SSH only.
        "--disable=receive-pack", str(git_dir),
    ]


class _DaemonProcess(protocol.ProcessProtocol):
    def __init__(self, on_exit: Callable[[str], None], log: Callable[[str], None]):
        self.on_exit = on_exit
        self.log = log
        self._partial = b""

    def errReceived(self, data: bytes) -> None:
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        for line in lines:
            self.log(f"git daemon: {line.decode('utf-8', 'replace')}")

    def processEnded(self, reason) -> None:
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.on_exit(f"signal {sig}" if sig else f"status {code}")


class GitDaemonService(service.Service):
    """Keeps one `git daemon` running while the service runs."""

    RESTART_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)

    def __init__(self, reactor, git_dir: Path, address: str, port: int,
                 log: Callable[[str], None]):
        self.reactor = reactor
        self.git_dir = Path(git_dir)
        self.address = address
        self.port = port
        self.log = log
        self.process = None
        self.restarts = 0
        self._stopped: defer.Deferred | None = None
        self._pending_restart = None

    @property
    def pid(self) -> int | None:
        """The running daemon's process id, if any."""
        return self.process.pid if self.process is not None else None

    def startService(self) -> None:
        super().startService()
        self._spawn()

    def _spawn(self) -> None:
        self._pending_restart = None
        argv = [sys.executable, "-c", _EXEC_WITH_PDEATHSIG,
                *daemon_argv(self.git_dir, self.address, self.port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        # Lets a mirror fetch a pinned commit that is no longer at a branch tip.
        env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="uploadpack.allowReachableSHA1InWant",
                   GIT_CONFIG_VALUE_0="true")
        self.process = self.reactor.spawnProcess(
            _DaemonProcess(self._exited, self.log), sys.executable, argv, env=env,
            childFDs={0: "w", 1: "r", 2: "r"})
        self.log(f"git daemon started (pid {self.process.pid}) on "
                 f"git://{self.address}:{self.port}/")

    def _exited(self, how: str) -> None:
        self.process = None
        if self._stopped is not None:
            d, self._stopped = self._stopped, None
            d.callback(None)
            return
        if not self.running:
            return
        delay = self.RESTART_DELAYS[min(self.restarts, len(self.RESTART_DELAYS) - 1)]
        self.restarts += 1
        self.log(f"git daemon exited ({how}); restarting in {delay}s")
        self._pending_restart = self.reactor.callLater(delay, self._spawn)

    def stopService(self):
        super().stopService()
        if self._pending_restart is not None and self._pending_restart.active():
            self._pending_restart.cancel()
        if self.process is None:
            return defer.succeed(None)
        self._stopped = defer.Deferred()
        process = self.process
        process.signalProcess("TERM")
        kill = self.reactor.callLater(5, _kill_if_alive, process)
        self._stopped.addBoth(lambda r: kill.cancel() if kill.active() else None)
        return self._stopped


def _kill_if_alive(process) -> None:
    try:
        process.signalProcess(signal.SIGKILL.name.removeprefix("SIG"))
    except Exception:
        pass


@defer.inlineCallbacks
def wait_for_port(reactor, address: str, port: int, timeout: float = 15.0):
    """Fire once something accepts TCP connections on address:port; TroveError on timeout."""
    from twisted.internet.endpoints import TCP4ClientEndpoint

    deadline = reactor.seconds() + timeout
    while True:
        try:
            proto = yield TCP4ClientEndpoint(reactor, address, port, timeout=1).connect(
                protocol.Factory.forProtocol(protocol.Protocol))
            proto.transport.loseConnection()
            return
        except Exception:
            if reactor.seconds() > deadline:
                raise TroveError("git daemon did not start listening",
                                 f"{address}:{port}") from None
            yield task_sleep(reactor, 0.05)


def task_sleep(reactor, seconds: float):
    """A Deferred that fires after `seconds`."""
    from twisted.internet import task
    return task.deferLater(reactor, seconds, lambda: None)

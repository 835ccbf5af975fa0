"""Keeping a local network's processes running: components, their restarts, the state lock.

`distbuild up` runs each component (trove, controller, worker) as its own
process in its own process group. A component that exits while the network
is up is started again at once with the same command line, so it reads the
same settings file and listens on the same ports; a component that keeps
dying is started less often, so a broken one does not spin. The state lock
(an flock held for the life of `up`) keeps a second `up` off a state
directory that a running one holds.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from distbuild.errors import DistbuildError

# A component that died this many times within CRASH_WINDOW seconds is restarted
# only every CRASH_DELAY seconds until it stays up.
CRASH_LIMIT = 5
CRASH_WINDOW = 60.0
CRASH_DELAY = 10.0
POLL_SECONDS = 0.2


class StateLocked(DistbuildError):
    """Another `distbuild up` holds the state directory."""


class StateLock:
    """An exclusive flock on STATE/up.lock, which holds the holder's PID."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / "up.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock (once), or raise StateLocked naming the PID that holds it."""
        if self._file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise StateLocked(f"another `distbuild up` (PID {holder}) is running on this "
                              "state directory; stop it first, or use another --state-dir",
                              str(self.path.parent)) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


@dataclass
class Component:
    """One process of the network and how to start it again."""

    name: str
    argv: list[str]
    log: Path
    # The file it writes once it listens; removed at each start, so it is never stale.
    ready: Path | None = None
    proc: subprocess.Popen | None = None
    deaths: list[float] = field(default_factory=list)
    next_start: float = 0.0

    def start(self, env: dict[str, str]) -> None:
        if self.ready is not None:
            self.ready.unlink(missing_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True,
                                         preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exited(self) -> int | None:
        """The exit status if the process has ended, else None."""
        return None if self.proc is None else self.proc.poll()

    def kill_leftovers(self) -> None:
        """SIGKILL what is left of the dead process's group (it was the group's leader)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Supervisor:
    """Restarts the components that exit; `on_change` hears of every new PID."""

    def __init__(self, env: dict[str, str], say: Callable[[str], None],
                 on_change: Callable[[], None]):
        self.env = env
        self.say = say
        self.on_change = on_change
        self.components: list[Component] = []

    def add(self, component: Component) -> Component:
        component.start(self.env)
        self.components.append(component)
        return component

    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.components if c.pid is not None}

    def check(self, now: float | None = None) -> None:
        """Start again every component that has exited (one pass; call it often)."""
        now = time.monotonic() if now is None else now
        changed = False
        for c in self.components:
            status = c.exited()
            if status is None:
                continue
            if not c.next_start:
                c.kill_leftovers()
                c.deaths = [t for t in c.deaths if now - t < CRASH_WINDOW] + [now]
                crashing = len(c.deaths) >= CRASH_LIMIT
                c.next_start = now + (CRASH_DELAY if crashing else 0.0)
                again = (f"it died {len(c.deaths)} times within {CRASH_WINDOW:.0f} s; "
                         f"starting it again in {CRASH_DELAY:.0f} s" if crashing
                         else "starting it again")
                self.say(f"{c.name} (PID {c.pid}) exited with {_how(status)}; {again}; "
                         f"see {c.log}")
            if now >= c.next_start:
                c.next_start = 0.0
                c.start(self.env)
                self.say(f"{c.name} started again as PID {c.pid}")
                changed = True
        if changed:
            self.on_change()

    def watch(self, done: Callable[[], bool]) -> None:
        """Keep every component running until `done()` is true."""
        while not done():
            self.check()
            time.sleep(POLL_SECONDS)

    def stop(self) -> None:
        for c in reversed(self.components):
            c.stop()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when `up` goes, however `up` goes (even
    SIGKILL), so no component outlives the network and holds its ports."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _how(status: int) -> str:
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"

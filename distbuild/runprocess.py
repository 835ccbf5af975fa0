"""Running a child process: bytes in and out, and killing it, with no policy.

Every child starts in a session (and so a process group) of its own, so that
cancelling kills the whole tree with one signal to the group. Output (stdout
and stderr together, in the order the child wrote it) is delivered line by
line to a callback while the child runs. What a step does with exit codes,
logs and timeouts lives in distbuild.worker, not here.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from distbuild.errors import DistbuildError

LineCallback = Callable[[str], None]

# How often a waiting runner looks at its cancel token: well inside the
# 2 seconds a cancelled step has to disappear in.
_POLL_SECONDS = 0.05
# A longer line is cut here, with a marker saying how much was dropped: one
# line of a log must neither fill memory nor overflow a protocol message.
MAX_LINE_BYTES = 256 << 10


def cut_marker(dropped: int) -> str:
    """What ends a line cut at MAX_LINE_BYTES."""
    return f" [distbuild: line cut, {dropped} more bytes not shown]"


class Cancelled(DistbuildError):
    """The work was cancelled; its processes have been killed."""


class CancelToken:
    """Set once to cancel whatever runs with this token, now or later."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask every process running with this token to be killed."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds; True as soon as cancelled."""
        return self._event.wait(timeout)

    def check(self, what: str = "step") -> None:
        """Raise Cancelled if cancelled."""
        if self.cancelled:
            raise Cancelled(f"{what} was cancelled")


def run(argv: Sequence[str], *, on_line: LineCallback | None = None,
        cancel: CancelToken | None = None, env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None, pass_fds: Sequence[int] = (),
        on_start: Callable[[int], None] | None = None) -> int:
    """Run `argv` to completion and return its exit status (negative: killed by a signal).

    Raises Cancelled (after the whole process group is dead) when `cancel`
    is set while it runs, and FileNotFoundError if the program does not exist.
    """
    if cancel is not None:
        cancel.check()
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env=dict(env) if env is not None else None,
        cwd=cwd, pass_fds=tuple(pass_fds), start_new_session=True,
    )
    if on_start is not None:
        on_start(proc.pid)
    lines = _Lines(on_line)
    try:
        status = _wait(proc, cancel, lines)
    except BaseException:
        kill_group(proc)
        lines.drain(proc.stdout, 1.0)
        raise
    if lines.failures:
        raise lines.failures[0]
    return status


def _wait(proc: subprocess.Popen, cancel: CancelToken | None, lines: _Lines) -> int:
    # One poll on the child's output and its pidfd, in the calling thread: a
    # reader thread per command was a thread made and joined for every
    # sandboxed command (and the pidfd is readable the moment the child
    # exits, so a short command is not held up by a polling interval; the
    # timeout is only for noticing cancellation).
    pidfd = os.pidfd_open(proc.pid)
    out = proc.stdout.fileno()
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(out, select.POLLIN)
        open_out = True
        while True:
            exited = False
            for fd, _ in poller.poll(_POLL_SECONDS * 1000):
                if fd == pidfd:
                    exited = True
                elif open_out and not lines.read(out):
                    poller.unregister(out)
                    open_out = False
            if exited:
                break
            if cancel is not None and cancel.cancelled:
                raise Cancelled("step was cancelled")
    finally:
        os.close(pidfd)
    # A grandchild that left the group could hold the pipe open forever;
    # the leader's output is complete by now, so do not wait long for it.
    lines.drain(proc.stdout, 2.0 if open_out else 0.0)
    return proc.wait()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group led by `proc` and reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + 2
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


class _Lines:
    """A child's output cut into lines for a callback, each line at most MAX_LINE_BYTES."""

    def __init__(self, on_line: LineCallback | None) -> None:
        self.on_line = on_line
        self.failures: list[BaseException] = []
        # `line` never holds more than MAX_LINE_BYTES; the rest of an overlong
        # line is only counted, up to its newline.
        self.line = bytearray()
        self.dropped = 0

    def read(self, fd: int) -> bool:
        """Take what `fd` has (it must be readable); False at its end."""
        chunk = os.read(fd, 65536)
        if not chunk:
            if self.line or self.dropped:
                self._end_line()
            return False
        start = 0
        while (newline := chunk.find(b"\n", start)) >= 0:
            self._add(chunk[start:newline])
            self._end_line()
            start = newline + 1
        self._add(chunk[start:])
        return True

    def drain(self, stream, seconds: float) -> None:
        """Read `stream` to its end for at most `seconds` more, then close it."""
        try:
            fd = stream.fileno()
            deadline = time.monotonic() + seconds
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while (left := deadline - time.monotonic()) > 0:
                if poller.poll(left * 1000) and not self.read(fd):
                    break
        finally:
            stream.close()

    def _add(self, piece: bytes) -> None:
        room = max(MAX_LINE_BYTES - len(self.line), 0)
        self.line.extend(piece[:room])
        self.dropped += max(len(piece) - room, 0)

    def _end_line(self) -> None:
        raw = bytes(self.line) + (cut_marker(self.dropped).encode() if self.dropped else b"")
        self.line.clear()
        self.dropped = 0
        # Keep draining even when the callback fails: a child blocked on a full
        # pipe would never exit. The first failure is raised once it has.
        if self.on_line is None or self.failures:
            return
        try:
            self.on_line(raw.decode("utf-8", "replace"))
        except Exception as e:
            self.failures.append(e)

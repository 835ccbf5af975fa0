"""A step's log: every line stamped with UTC time, written to a file and passed on live.

Format, one line each: `2026-11-22T06:50:01.123Z TEXT`. A phase starts with
a header line `=== PHASE ===`; each command is echoed as `+ COMMAND` (one
`+ ` line per line of the command) before it runs.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from pathlib import Path

from distbuild.timestamps import log_stamp

LogCallback = Callable[[str], None]

timestamp = log_stamp


class StepLog:
    """Appends timestamped lines to `path` and hands each to `on_line` as it comes."""

    def __init__(self, path: Path, on_line: LogCallback | None = None, tail: int = 20):
        self.path = path
        self._file = path.open("a", encoding="utf-8")
        self._on_line = on_line
        self._tail: collections.deque[str] = collections.deque(maxlen=tail)
        self._lock = threading.Lock()
        # The first failure to write the file (a full disk): lines still go
        # to the callback, and the step raises it when it ends.
        self.error: OSError | None = None

    def line(self, text: str) -> None:
        """Log one line of text (command output or a status message)."""
        stamped = f"{timestamp()} {text}"
        with self._lock:
            if self.error is None:
                # Buffered: a write per line cost a syscall each, and a failure
                # (a full disk) still surfaces here or at close, which keeps it.
                try:
                    self._file.write(stamped + "\n")
                except OSError as e:
                    self.error = e
            self._tail.append(text)
        if self._on_line is not None:
            self._on_line(stamped)

    def header(self, phase: str) -> None:
        """Start a phase."""
        self.line(f"=== {phase} ===")

    def command(self, command: str) -> None:
        """Echo a command before it runs."""
        for part in command.splitlines() or [""]:
            self.line(f"+ {part}")

    def output_started(self) -> None:
        """Forget the tail so far: the next failure report shows only its own command's output."""
        with self._lock:
            self._tail.clear()

    @property
    def last_lines(self) -> list[str]:
        """The most recent lines, for failure reports."""
        with self._lock:
            return list(self._tail)

    def close(self) -> None:
        """Close the file; the callback gets nothing more."""
        try:
            self._file.close()
        except OSError as e:
            self.error = self.error or e

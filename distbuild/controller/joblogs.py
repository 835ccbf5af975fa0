"""Every attempt's log as the controller received it, one file per job under state_dir/logs.

The files outlive the attempt and the controller: a later `distbuild log`
reads a failed or detached step's log from here, an initiator that attaches
gets a running step's log from its start, and a restarted controller knows
how many lines of each running job it has, so a reconnecting worker resends
exactly the rest. Lines are numbered from 0 within a job; a line already
held is never written twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

# Text per step-output or log-lines message (see worker.jobs: far below the message limit).
CHUNK_CHARS = 1 << 20
_SAFE = re.compile(r"[A-Za-z0-9._-]+")


class JobLogs:
    """The log files of every job, and how many lines each holds."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, TextIO] = {}
        self._count: dict[str, int] = {}

    def path(self, job: str) -> Path:
        if not _SAFE.fullmatch(job):
            raise ValueError(f"job id {job!r} is not a file name")
        return self.directory / f"{job}.log"

    def count(self, job: str) -> int:
        """How many lines of `job` are held (read from its file once after a restart)."""
        if job not in self._count:
            path = self.path(job)
            self._count[job] = _whole_lines(path) if path.exists() else 0
        return self._count[job]

    def add(self, job: str, first: int | None, lines: list[str]) -> tuple[int, list[str]]:
        """Append what is new of `lines` (numbered from `first`); (its first number, the lines).

        `first` None (an older worker) means the lines follow what is held.
        """
        have = self.count(job)
        start = have if first is None else first
        fresh = lines[max(0, have - start):]
        if not fresh:
            return have, []
        out = self._open.get(job)
        if out is None:
            out = self._open[job] = self.path(job).open("a", encoding="utf-8",
                                                        errors="replace", newline="\n")
        out.write("".join(line.replace("\n", " ") + "\n" for line in fresh))
        out.flush()
        self._count[job] = have + len(fresh)
        return have, fresh

    def read(self, job: str, start: int = 0) -> Iterator[tuple[int, list[str]]]:
        """The held lines of `job` from number `start`, in chunks: (first number, lines)."""
        path = self.path(job)
        if not path.exists():
            return
        if job in self._open:
            self._open[job].flush()
        number, chunk, size = 0, [], 0
        with path.open("r", encoding="utf-8", errors="replace", newline="\n") as f:
            for text in f:
                if not text.endswith("\n"):
                    break  # half a line from a controller killed while writing it
                if number >= start:
                    chunk.append(text[:-1])
                    size += len(text)
                    if size >= CHUNK_CHARS:
                        yield number - len(chunk) + 1, chunk
                        chunk, size = [], 0
                number += 1
        if chunk:
            yield number - len(chunk), chunk

    def read_after(self, job: str, offset: int, limit: int = CHUNK_CHARS
                   ) -> tuple[int, list[str]]:
        """Whole lines of `job` from byte `offset`, about `limit` characters of them at most:
        (the offset after them, the lines). For followers that poll a growing log."""
        path = self.path(job)
        if job in self._open:
            self._open[job].flush()
        try:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(limit)
        except FileNotFoundError:
            return offset, []
        end = data.rfind(b"\n") + 1
        if end == 0:
            # Half a line so far, or one longer than `limit` (workers cut lines far shorter).
            return (self.read_after(job, offset, limit * 2) if len(data) == limit
                    else (offset, []))
        return offset + end, data[:end].decode("utf-8", "replace").split("\n")[:-1]

    def close(self, job: str) -> None:
        """The job ended: its file stays, its handle goes."""
        out = self._open.pop(job, None)
        if out is not None:
            out.close()

    def close_all(self) -> None:
        for job in list(self._open):
            self.close(job)


def _whole_lines(path: Path) -> int:
    """Lines in `path`, cutting off half a line left by a kill so appends start clean."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return data.count(b"\n", 0, end)

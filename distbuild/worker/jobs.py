"""The jobs a worker holds, and what each still owes the controller.

A job's log lines are kept as they come (in memory, then in a spool file
under the work directory past MEMORY_BYTES), so that however long the
controller is away nothing is lost and memory stays bounded: when a link
adopts the job (a fresh job-run, or job-adopt after a reconnect) the job's
output is sent from the line that controller asks for, then its result.
One sender thread serves every job, so each job's messages leave in order.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from distbuild.link import Link, LinkError
from distbuild.protocol import ProtocolError
from distbuild.protocol import messages as m
from distbuild.runprocess import CancelToken

# The sender looks at every job this often; a job's new lines go out once the
# oldest of them is OUTPUT_SECONDS old (or FLUSH_LINES have gathered), and
# with the job's result when it ends. So a step shorter than OUTPUT_SECONDS
# sends its log and result in one message (the controller forwards each
# job-output to the initiators too), and a live log is at most ~1 s behind.
FLUSH_SECONDS = 0.2
OUTPUT_SECONDS = 1.0
FLUSH_LINES = 200
# Raw text per job-output message: with JSON escaping (at most 6 bytes per
# byte) and one overlong line it stays far below the 16 MiB message limit.
MESSAGE_TEXT_BYTES = 1 << 20
# A job's log is held in memory up to this much, then spooled to a file.
MEMORY_BYTES = 1 << 20
# A result sent just before a link dropped may not have arrived; it is kept
# (and listed as held) this long, so the next controller can ask for it again.
KEEP_REPORTED_SECONDS = 120.0


class OutputSpool:
    """A job's log lines: appended by the job, read from any line by the sender.

    They are kept in memory up to MEMORY_BYTES, then in a file (`path`, made
    only then): a step's file made and deleted cost 0.2-0.7 ms of ext4's
    time on a busy disk, while most steps log a few dozen lines.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self.count = 0
        self._lines: list[str] | None = []  # None once spilled to the file
        self._size = 0
        self._out = None
        self._reader = None  # the spool file, read from `_next` on
        self._reading = False  # rewound at least once: there is a reader
        self._next = 0  # the number of the next line `read` returns
        self._waiting_since: float | None = None  # when the oldest unread line came

    def append(self, line: str) -> None:
        """Add one line (newlines inside it become spaces)."""
        line = line.replace("\n", " ")
        with self._lock:
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()
            if self._lines is not None:
                self._lines.append(line)
                self._size += len(line) + 1
                if self._size > MEMORY_BYTES:
                    self._spill()
            else:
                self._out.write(line + "\n")
            self.count += 1

    def _spill(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.path.open("w", encoding="utf-8", errors="replace", newline="\n")
        self._out.writelines(line + "\n" for line in self._lines)
        self._lines = None
        if self._reading:
            self._open_reader(self._next)

    def _open_reader(self, line: int) -> None:
        self._out.flush()
        if self._reader is not None:
            self._reader.close()
        self._reader = self.path.open("r", encoding="utf-8", errors="replace", newline="\n")
        self._next = 0
        while self._next < min(line, self.count):
            self._reader.readline()
            self._next += 1

    def rewind(self, line: int) -> None:
        """Make `read` start again at line number `line` (from 0)."""
        with self._lock:
            self._reading = True
            if self._lines is not None:
                self._next = min(line, self.count)
            else:
                self._open_reader(line)

    def read(self, limit: int = MESSAGE_TEXT_BYTES) -> tuple[int, list[str]]:
        """(number of the first, lines) not yet read, up to about `limit` characters."""
        with self._lock:
            if not self._reading or self._next >= self.count:
                self._waiting_since = None
                return self._next, []
            first, lines, size = self._next, [], 0
            if self._lines is not None:
                while self._next < self.count and size < limit:
                    lines.append(self._lines[self._next])
                    size += len(lines[-1]) + 1
                    self._next += 1
                return first, lines
            self._out.flush()
            while self._next < self.count and size < limit:
                # Lines are written whole and flushed under this lock: never half a line.
                text = self._reader.readline()
                lines.append(text[:-1])
                size += len(text)
                self._next += 1
            return first, lines

    def due(self, now: float) -> bool:
        """Whether unread lines have waited OUTPUT_SECONDS (or FLUSH_LINES have come)."""
        with self._lock:
            if not self._reading or self._next >= self.count:
                return False
            return (self.count - self._next >= FLUSH_LINES or self._waiting_since is None
                    or now - self._waiting_since >= OUTPUT_SECONDS)

    @property
    def unread(self) -> int:
        with self._lock:
            return self.count - self._next if self._reading else 0

    def close(self) -> None:
        with self._lock:
            self._lines = []
            for handle in (self._out, self._reader):
                if handle is not None:
                    handle.close()
            if self._out is not None:
                self.path.unlink(missing_ok=True)
            self._out = self._reader = None


@dataclass
class HeldJob:
    """One job this worker runs or has run, until the controller has its result."""

    job: str
    token: CancelToken
    spool: OutputSpool
    link: Link | None = None  # the link that adopted it; output and result go there only
    result: m.Message | None = None
    reported_at: float | None = None
    handed_back: bool = False
    resend: bool = False  # adopted again: send its output now, however recent
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.result is None and not self.handed_back


class JobTable:
    """Every held job, and the thread that sends their output and results."""

    def __init__(self, spool_dir: Path, log):
        self.spool_dir = spool_dir
        self.log = log
        self.jobs: dict[str, HeldJob] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.sender = threading.Thread(target=self._send_loop, name="job-sender", daemon=True)
        self.sender.start()

    def add(self, job: str, link: Link) -> HeldJob:
        """A new job, adopted by `link` from its first line."""
        held = HeldJob(job, CancelToken(), OutputSpool(self.spool_dir / f"{job}.out"))
        held.spool.rewind(0)
        held.link = link
        with self.lock:
            self.jobs[job] = held
        return held

    def get(self, job: str) -> HeldJob | None:
        with self.lock:
            return self.jobs.get(job)

    def line(self, held: HeldJob, text: str) -> None:
        """A line of the job's log."""
        held.spool.append(text)
        if held.spool.unread >= FLUSH_LINES:
            self.wake.set()

    def adopt(self, job: str, link: Link, lines: int) -> bool:
        """`link` keeps the job: resend its output from line `lines`, then its result."""
        held = self.get(job)
        if held is None:
            return False
        held.spool.rewind(lines)
        held.reported_at = None
        held.link = link
        held.resend = True
        self.wake.set()
        return True

    def finish(self, held: HeldJob, result: m.Message | None) -> None:
        """The job ended: `result` is owed to the controller (None: nothing is)."""
        held.result = result
        if result is None:
            self.forget(held.job)
        self.wake.set()

    def forget(self, job: str) -> None:
        """Drop a job the controller does not want (or need to hear of) any more."""
        with self.lock:
            held = self.jobs.pop(job, None)
        if held is not None:
            held.token.cancel()
            if held.result is not None or held.handed_back:
                held.spool.close()

    def held(self) -> list[str]:
        """Jobs to list in worker-ready: running, ended but unreported, or reported lately."""
        now = time.monotonic()
        with self.lock:
            return [j for j, h in self.jobs.items()
                    if h.reported_at is None or now - h.reported_at < KEEP_REPORTED_SECONDS]

    def link_lost(self) -> None:
        """Nothing is sent until a new link adopts each job again."""
        with self.lock:
            for held in self.jobs.values():
                held.link = None

    def running(self) -> list[HeldJob]:
        with self.lock:
            return [h for h in self.jobs.values() if h.running]

    def unreported(self) -> list[HeldJob]:
        with self.lock:
            return [h for h in self.jobs.values() if h.reported_at is None]

    def flush(self, held: HeldJob) -> None:
        """Send what the job's adopting link has not had yet (from the sender thread only)."""
        link = held.link
        if link is None:
            return
        try:
            # The last output goes out with the result in one write: one SSH
            # packet for the controller to take in, not two. The result is read
            # first: a job's lines are all in the spool before it is set.
            result = held.result
            batch: list[m.Message] = []
            while True:
                first, lines = held.spool.read()
                if not lines:
                    break
                if batch:
                    link.send_many(batch)
                batch = [m.JobOutput(job=held.job, lines=lines, first=first)]
            if result is not None and held.reported_at is None:
                batch.append(result)
            if batch:
                link.send_many(batch)
            if result is not None and held.reported_at is None:
                held.reported_at = time.monotonic()
        except LinkError:
            held.link = None  # the link loop notices and reconnects
        except ProtocolError as e:  # cannot happen with the bounds above; never hang on it
            self.log(f"job {held.job}: cannot send: {e}")
            held.reported_at = time.monotonic()

    def _send_loop(self) -> None:
        while not self.stopped.is_set():
            self.wake.wait(FLUSH_SECONDS)
            self.wake.clear()
            now = time.monotonic()
            with self.lock:
                jobs = list(self.jobs.values())
            for held in jobs:
                if held.reported_at is not None and not held.resend:
                    # Reported (and kept a while in case the link lost it): nothing to send.
                    if now - held.reported_at > KEEP_REPORTED_SECONDS:
                        self.forget(held.job)
                    continue
                if held.result is not None or held.resend or held.spool.due(now):
                    held.resend = False
                    self.flush(held)

    def sent_everything(self) -> bool:
        """True once every ended job's result has gone out on a link."""
        with self.lock:
            return all(h.reported_at is not None or h.handed_back for h in self.jobs.values()
                       if not h.running)

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()
        self.sender.join(timeout=5)

"""A record of the reactor's turns and the GC's passes, for benchmarks (DISTBUILD_TURN_TRACE).

A turn is one poll's I/O handlers plus the timed calls after it. For each
turn the record keeps its wall time, the reactor thread's CPU time and the
time the thread waited for a CPU (from /proc/thread-self/schedstat): a long
turn of little CPU was the machine's load, a long turn of much CPU was the
controller's own work. Each pass of the cyclic GC is kept with its
generation and length. The record is written as JSON when the reactor
stops. It costs a few microseconds a turn; off unless the variable is set.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

SCHEDSTAT = Path("/proc/thread-self/schedstat")


def _sched() -> tuple[float, float]:
    """(CPU seconds, seconds waited for a CPU) of the calling thread so far."""
    try:
        cpu, wait = SCHEDSTAT.read_text().split()[:2]
    except (OSError, ValueError):
        return time.thread_time(), 0.0
    return int(cpu) / 1e9, int(wait) / 1e9


class TurnTrace:
    """Wraps one epoll reactor's poll and timed calls; `write` saves what it saw."""

    def __init__(self, reactor, path: Path):
        self.path = path
        self.turns: list[tuple[float, float, float, float]] = []  # start, wall, cpu, waited
        self.passes: list[tuple[float, int, float]] = []  # start, generation, seconds
        self._woke: tuple[float, float, float] | None = None
        self._gc_start = 0.0
        poller, run_calls = reactor._poller, reactor.runUntilCurrent
        trace = self

        class Poller:
            def poll(self, *args):
                events = poller.poll(*args)
                trace._woke = (time.time(), *_sched())
                return events

            def __getattr__(self, name):
                return getattr(poller, name)

        def runUntilCurrent():
            run_calls()
            if trace._woke is not None:
                (start, cpu0, wait0), (cpu, wait) = trace._woke, _sched()
                trace.turns.append((start, time.time() - start, cpu - cpu0, wait - wait0))
                trace._woke = None

        reactor._poller = Poller()
        reactor.runUntilCurrent = runUntilCurrent
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.passes.append((time.time(), info["generation"],
                                time.perf_counter() - self._gc_start))

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"turns": self.turns, "gc": self.passes}))
        tmp.replace(self.path)


def install(reactor, path: str) -> None:
    """Trace `reactor` (an epoll reactor) and write the record to `path` when it stops."""
    trace = TurnTrace(reactor, Path(path))
    reactor.addSystemEventTrigger("before", "shutdown", trace.write)

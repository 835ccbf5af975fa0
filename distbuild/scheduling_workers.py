"""The scheduler's workers: joining, leaving, going away, draining, handing back.

A worker's link can drop while it lives (it is then away, its jobs kept for a
while); it can drain (no new work) and hand back what it will not finish (run
again, not counted as a failure); after a controller restart the jobs that
were running wait for their workers (`restore_job`). Part of
`scheduling.Scheduler`, whose state and internals these methods use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from distbuild.scheduling_events import BUILT, RUNNING, WAITING, Event, StepRequeued

if TYPE_CHECKING:
    from distbuild.scheduling_index import WorkIndex


@dataclass(eq=False, slots=True)
class Worker:
    name: str
    arch: str
    slots: int
    jobs: set[str] = field(default_factory=set)
    # Away: its link is gone (or not back since a controller restart) but its
    # jobs are kept for a while, as it may come back holding them. Draining:
    # it finishes what it runs and takes nothing new. Either way, no new work.
    away: bool = False
    draining: bool = False
    labels: frozenset[str] = frozenset()
    group: tuple[str, frozenset[str]] = field(init=False)  # (arch, labels): alike workers

    def __post_init__(self) -> None:
        self.group = (self.arch, self.labels)

    @property
    def free(self) -> int:
        return self.slots - len(self.jobs)


class WorkerChanges:
    """Scheduler methods for what workers do; every one returns the events it caused."""

    workers: dict[str, Worker]
    jobs: dict[str, str]
    work: WorkIndex
    retry_limit: int

    def add_worker(self, name: str, arch: str, slots: int, held: Iterable[str] = (),
                   labels: Iterable[str] = ()) -> list[Event]:
        """A worker joined (or rejoined) with `slots` slots and `labels`, still running `held`.

        Of the jobs it had before, those it holds are kept; the rest run again.
        """
        old = self.workers.get(name)
        keep = {j for j in held if old is not None and j in old.jobs and j in self.jobs}
        events: list[Event] = []
        if old is not None:
            old.jobs -= keep
            events = self.remove_worker(name, "worker came back without it")
        worker = self.workers[name] = Worker(name, arch, max(1, slots), jobs=keep,
                                             labels=frozenset(labels))
        self._slot_freed(worker)
        return events + self.dispatch()

    def worker_away(self, name: str) -> list[Event]:
        """A worker's link is gone: keep its jobs until it is back or `remove_worker`."""
        worker = self.workers.get(name)
        if worker is not None:
            worker.away = True
        return []

    def drain_worker(self, name: str) -> list[Event]:
        """A worker takes no new work; what it runs goes on."""
        worker = self.workers.get(name)
        if worker is not None:
            worker.draining = True
        return []

    def reserve(self, name: str, job: str) -> bool:
        """Take a free slot of worker `name` for a job this scheduler does not run (a check)."""
        worker = self.workers.get(name)
        if worker is None or worker.away or worker.draining or worker.free <= 0:
            return False
        worker.jobs.add(job)
        self._slot_freed(worker)  # its heap entry now holds a stale count: push the new one
        return True

    def unreserve(self, name: str, job: str) -> list[Event]:
        """Give back a slot `reserve` took; what is ready may take it."""
        self._take_back(name, job)
        return self.dispatch()

    def restore_job(self, job: str, key: str, worker: str, attempt: int) -> bool:
        """After a restart: `job` was running `key` on `worker`, which may come back with it.

        False if nothing needs `key` any more (the caller ends the attempt).
        """
        work = self.work.get(key)
        if work is None or not work.requests or work.state in (BUILT, RUNNING):
            return False
        holder = self.workers.setdefault(worker, Worker(worker, work.arch, 0, away=True))
        holder.jobs.add(job)
        # A READY work's heap entries go stale: only READY work is taken from them.
        work.state, work.job, work.worker = RUNNING, job, worker
        work.attempts = max(work.attempts, attempt)
        self.jobs[job] = key
        self._running(work)
        return True

    def hand_back(self, job: str, reason: str) -> list[Event]:
        """A worker gave `job` back unfinished: run it again, without counting a failure."""
        key = self.jobs.pop(job, None)
        if key is None:
            return []
        work = self.work[key]
        worker = work.worker or ""
        self._take_back(work.worker, job)
        self._not_running(work)
        work.job = work.worker = None
        work.handed_back += 1
        if not work.requests:
            work.state = WAITING
            return self.dispatch()
        self._make_ready(work)
        return [StepRequeued(key, worker, reason, dict(work.requests), job, "handed-back"),
                *self.dispatch()]

    def remove_worker(self, name: str, reason: str = "worker disconnected") -> list[Event]:
        """A worker went away: its running steps go back to the queue, up to the retry limit."""
        worker = self.workers.pop(name, None)
        if worker is None:
            return []
        events: list[Event] = []
        for job in sorted(worker.jobs):
            key = self.jobs.pop(job, None)
            if key is None:
                continue  # cancelled while handling an earlier job of this worker
            work = self.work[key]
            self._not_running(work)
            work.job = work.worker = None
            if not work.requests:
                work.state = WAITING
                continue
            why = f"{reason} during the step ({name})"
            if work.attempts - work.handed_back > self.retry_limit:
                events += self._fail(work, name, f"{why}; gave up after {work.attempts} attempts")
            else:
                self._make_ready(work)
                events.append(StepRequeued(key, name, why, dict(work.requests), job))
        return events + self.dispatch()

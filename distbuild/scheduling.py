"""The controller's scheduling policy, as a state machine with no I/O.

Work is identified by cache key: the same key needed by two requests is one
piece of work, built once. Each call returns the events that follow from it;
the controller turns them into messages. Ready work goes to free worker slots
whose arch matches, longest remaining path first, then oldest request first.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distbuild.definitions import BuildGraph


class State(enum.Enum):
    WAITING = "waiting"  # some dependency is not built yet
    READY = "ready"  # can run; waits for a worker slot
    RUNNING = "running"
    BUILT = "built"
    FAILED = "failed"


@dataclass(frozen=True)
class StepInfo:
    """What scheduling needs to know of one graph node."""

    node_id: str
    cache_key: str
    arch: str
    depends: tuple[str, ...]  # node ids
    priority: int  # nodes on the longest chain from here to the end of the graph


@dataclass
class Work:
    key: str
    arch: str
    deps: set[str]
    state: State = State.WAITING
    dependents: set[str] = field(default_factory=set)
    requests: dict[str, str] = field(default_factory=dict)  # request id -> node id
    priority: int = 0
    attempts: int = 0
    handed_back: int = 0  # attempts a draining worker gave back: not failures
    job: str | None = None
    worker: str | None = None


@dataclass
class Request:
    id: str
    seq: int
    needed: set[str]  # keys this request must see built
    total: int
    built: set[str] = field(default_factory=set)


@dataclass
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


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestPlanned:
    request_id: str
    total: int
    unbuilt: int


@dataclass(frozen=True)
class StepQueued:
    key: str
    requests: dict[str, str]


@dataclass(frozen=True)
class JobStarted:
    job: str
    key: str
    worker: str
    attempt: int
    requests: dict[str, str]


@dataclass(frozen=True)
class StepJoined:
    """A request now also waits for work that was already running for another one."""

    key: str
    worker: str
    attempt: int
    requests: dict[str, str]


@dataclass(frozen=True)
class StepBuilt:
    key: str
    worker: str
    requests: dict[str, str]
    progress: dict[str, tuple[int, int]]  # request id -> (built, needed)


@dataclass(frozen=True)
class StepRequeued:
    key: str
    worker: str
    reason: str
    requests: dict[str, str]
    job: str = ""
    outcome: str = "lost"  # what became of the attempt: lost, or handed-back


@dataclass(frozen=True)
class StepFailed:
    key: str
    worker: str
    reason: str
    requests: dict[str, str]


@dataclass(frozen=True)
class JobCancelled:
    job: str
    key: str
    worker: str


@dataclass(frozen=True)
class RequestFinished:
    request_id: str


@dataclass(frozen=True)
class RequestFailed:
    request_id: str
    reason: str
    key: str | None = None


@dataclass(frozen=True)
class RequestCancelled:
    request_id: str


Event = (RequestPlanned | StepQueued | JobStarted | StepJoined | StepBuilt | StepRequeued
         | StepFailed | JobCancelled | RequestFinished | RequestFailed | RequestCancelled)


class Scheduler:
    """Requests, shared work and worker slots; every method returns the events it caused."""

    def __init__(self, retry_limit: int = 2, job_id: Callable[[str], str] | None = None):
        self.retry_limit = retry_limit
        self.work: dict[str, Work] = {}
        self.requests: dict[str, Request] = {}
        self.workers: dict[str, Worker] = {}
        self.jobs: dict[str, str] = {}  # job id -> key
        self._seq = 0
        self._jobs_made = 0
        # Job ids must be unique for the network's whole life: the controller
        # passes a generator backed by its database.
        self.job_id = job_id or self._next_job_id

    def _next_job_id(self, key: str) -> str:
        self._jobs_made += 1
        return f"{key[:16]}-{self._jobs_made}"

    # -- requests --------------------------------------------------------------------------

    def add_request(self, request_id: str, steps: Iterable[StepInfo], targets: Iterable[str],
                    cached: set[str]) -> list[Event]:
        """Plan a request: `targets` are node ids to produce, `cached` the keys already built."""
        steps = list(steps)
        by_id = {s.node_id: s for s in steps}
        events: list[Event] = []
        for step in steps:
            work = self.work.get(step.cache_key)
            if work is None:
                work = self.work[step.cache_key] = Work(
                    step.cache_key, step.arch, {by_id[d].cache_key for d in step.depends})
            if step.cache_key in cached:
                if work.state in (State.WAITING, State.READY, State.FAILED):
                    events += self._mark_built(work)[1]
            elif work.state in (State.BUILT, State.FAILED):
                # The cache no longer has it (or it failed for an earlier request): try again.
                work.state, work.attempts = State.WAITING, 0
            work.priority = max(work.priority, step.priority)
        for step in steps:
            for dep in self.work[step.cache_key].deps:
                self.work[dep].dependents.add(step.cache_key)
        needed = self._needed(by_id, targets)
        self._seq += 1
        request = Request(request_id, self._seq, needed, len(steps))
        self.requests[request_id] = request
        events.append(RequestPlanned(request_id, len(steps), len(needed)))
        node_of = {s.cache_key: s.node_id for s in steps}
        for key in needed:
            work = self.work[key]
            work.requests[request_id] = node_of[key]
            if work.state == State.RUNNING:
                events.append(StepJoined(key, work.worker or "", work.attempts,
                                         {request_id: node_of[key]}))
        for key in needed:
            events += self._promote(self.work[key])
        if not needed:
            del self.requests[request_id]
            events.append(RequestFinished(request_id))
        return events + self.dispatch()

    def _needed(self, by_id: dict[str, StepInfo], targets: Iterable[str]) -> set[str]:
        """Unbuilt targets and every unbuilt node in their closures (staging needs them all)."""
        needed: set[str] = set()
        stack = [t for t in targets if self.work[by_id[t].cache_key].state != State.BUILT]
        seen: set[str] = set()
        while stack:
            nid = stack.pop()
            if nid in seen:
                continue
            seen.add(nid)
            key = by_id[nid].cache_key
            if self.work[key].state != State.BUILT:
                needed.add(key)
            stack.extend(by_id[nid].depends)
        return needed

    def cancel_request(self, request_id: str) -> list[Event]:
        """Drop a request; work no other request needs is cancelled."""
        if request_id not in self.requests:
            return []
        return [*self._detach(request_id), RequestCancelled(request_id)]

    # -- workers ---------------------------------------------------------------------------

    def add_worker(self, name: str, arch: str, slots: int,
                   held: Iterable[str] = ()) -> list[Event]:
        """A worker joined (or rejoined) with `slots` slots, still running the jobs `held`.

        Of the jobs it had before, those it holds are kept; the rest run again.
        """
        old = self.workers.get(name)
        keep = {j for j in held if old is not None and j in old.jobs and j in self.jobs}
        events: list[Event] = []
        if old is not None:
            old.jobs -= keep
            events = self.remove_worker(name, "worker came back without it")
        self.workers[name] = Worker(name, arch, max(1, slots), jobs=keep)
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

    def restore_job(self, job: str, key: str, worker: str, attempt: int) -> bool:
        """After a restart: `job` was running `key` on `worker`, which may come back with it.

        False if nothing needs `key` any more (the caller ends the attempt).
        """
        work = self.work.get(key)
        if work is None or not work.requests or work.state in (State.BUILT, State.RUNNING):
            return False
        holder = self.workers.setdefault(worker, Worker(worker, work.arch, 0, away=True))
        holder.jobs.add(job)
        work.state, work.job, work.worker = State.RUNNING, job, worker
        work.attempts = max(work.attempts, attempt)
        self.jobs[job] = key
        return True

    def hand_back(self, job: str, reason: str) -> list[Event]:
        """A worker gave `job` back unfinished: run it again, without counting a failure."""
        key = self.jobs.get(job)
        if key is None:
            return []
        work = self.work[key]
        holder = self.workers.get(work.worker or "")
        if holder is not None:
            holder.jobs.discard(job)
        del self.jobs[job]
        worker = work.worker or ""
        work.job = work.worker = None
        work.handed_back += 1
        if not work.requests:
            work.state = State.WAITING
            return self.dispatch()
        work.state = State.READY
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
            work.job = work.worker = None
            if not work.requests:
                work.state = State.WAITING
                continue
            why = f"{reason} during the step ({name})"
            if work.attempts - work.handed_back > self.retry_limit:
                events += self._fail(work, name, f"{why}; gave up after {work.attempts} attempts")
            else:
                work.state = State.READY
                events.append(StepRequeued(key, name, why, dict(work.requests), job))
        return events + self.dispatch()

    # -- jobs ------------------------------------------------------------------------------

    def dispatch(self) -> list[Event]:
        """Give ready work to free slots: longest remaining path first, then oldest request."""
        ready = [w for w in self.work.values() if w.state == State.READY and w.requests]
        ready.sort(key=lambda w: (-w.priority,
                                  min(self.requests[r].seq for r in w.requests), w.key))
        events: list[Event] = []
        for work in ready:
            free = [wk for wk in self.workers.values()
                    if wk.arch == work.arch and len(wk.jobs) < wk.slots
                    and not wk.away and not wk.draining]
            if not free:
                continue
            worker = max(free, key=lambda wk: (wk.slots - len(wk.jobs), wk.name))
            work.attempts += 1
            job = self.job_id(work.key)
            work.state, work.job, work.worker = State.RUNNING, job, worker.name
            worker.jobs.add(job)
            self.jobs[job] = work.key
            events.append(JobStarted(job, work.key, worker.name, work.attempts,
                                     dict(work.requests)))
        return events

    def job_requests(self, job: str) -> dict[str, str]:
        """Which requests (request id -> node id) follow this job's output."""
        key = self.jobs.get(job)
        return dict(self.work[key].requests) if key else {}

    def queue(self) -> list[Work]:
        """Ready work in the order `dispatch` will hand it out, arch by arch (farm views).

        Asked of a copy: it gets a worker per arch with a slot for every ready step,
        and the order its dispatch starts them in is the answer. Nothing here changes.
        """
        ready: dict[str, int] = {}
        for work in self.work.values():
            if work.state == State.READY and work.requests:
                ready[work.arch] = ready.get(work.arch, 0) + 1
        if not ready:
            return []
        job_id = self.__dict__.get("job_id")
        if job_id is not None:
            self.job_id = _queue_job_id  # the real one may count ids in a database
        try:
            clone = copy.deepcopy(self)
        finally:
            if job_id is not None:
                self.job_id = job_id
        order: list[Work] = []
        for arch, count in sorted(ready.items()):
            for event in clone.add_worker(f"\0queue {arch}", arch, count):
                if isinstance(event, JobStarted):
                    order.append(self.work[event.key])
        return order

    def release_slot(self, job: str) -> list[Event]:
        """The worker is done with `job` (its result is being checked): give the slot away.

        The step stays running until job_finished or job_failed; only the
        worker's capacity is freed, so the next step need not wait for the check.
        """
        key = self.jobs.get(job)
        if key is None:
            return []
        worker = self.workers.get(self.work[key].worker or "")
        if worker is None or job not in worker.jobs:
            return []
        worker.jobs.discard(job)
        return self.dispatch()

    def job_finished(self, job: str) -> list[Event]:
        """A job built its step; dependents may become ready, requests may finish."""
        work = self._end_job(job)
        if work is None:
            return []
        worker, requests = work.worker or "", dict(work.requests)
        work.job = work.worker = None
        progress, events = self._mark_built(work)
        return [StepBuilt(work.key, worker, requests, progress), *events, *self.dispatch()]

    def job_failed(self, job: str, reason: str) -> list[Event]:
        """A job's step failed: every request that needs it fails; the others go on."""
        work = self._end_job(job)
        if work is None:
            return []
        worker = work.worker or ""
        work.job = work.worker = None
        return self._fail(work, worker, reason) + self.dispatch()

    def _end_job(self, job: str) -> Work | None:
        key = self.jobs.pop(job, None)
        if key is None:
            return None  # a job we already gave up on (cancelled, or its worker left)
        work = self.work[key]
        if work.worker in self.workers:
            self.workers[work.worker].jobs.discard(job)
        return work

    # -- internals -------------------------------------------------------------------------

    def _promote(self, work: Work) -> list[Event]:
        if work.state == State.WAITING and work.requests and all(
                self.work[d].state == State.BUILT for d in work.deps):
            work.state = State.READY
            return [StepQueued(work.key, dict(work.requests))]
        return []

    def _mark_built(self, work: Work) -> tuple[dict[str, tuple[int, int]], list[Event]]:
        """Record `work` as built: progress per request, and what that makes ready or finished."""
        work.state = State.BUILT
        progress: dict[str, tuple[int, int]] = {}
        finished = []
        for rid in list(work.requests):
            request = self.requests[rid]
            request.built.add(work.key)
            progress[rid] = (len(request.built), len(request.needed))
            if request.built >= request.needed:
                finished.append(rid)
        events: list[Event] = []
        for dep_key in sorted(work.dependents):
            events += self._promote(self.work[dep_key])
        for rid in finished:
            events += self._detach(rid)
            events.append(RequestFinished(rid))
        return progress, events

    def _fail(self, work: Work, worker: str, reason: str) -> list[Event]:
        work.state = State.FAILED
        events: list[Event] = [StepFailed(work.key, worker, reason, dict(work.requests))]
        for rid in list(work.requests):
            events += self._detach(rid)
            events.append(RequestFailed(rid, reason, work.key))
        return events

    def _detach(self, request_id: str) -> list[Event]:
        """Forget a request; running work that nobody needs any more is cancelled."""
        request = self.requests.pop(request_id)
        events: list[Event] = []
        for key in request.needed:
            work = self.work[key]
            work.requests.pop(request_id, None)
            if work.requests:
                continue
            if work.state == State.RUNNING and work.job:
                self.jobs.pop(work.job, None)
                if work.worker in self.workers:  # a lost worker has nothing to cancel
                    events.append(JobCancelled(work.job, key, work.worker))
                    self.workers[work.worker].jobs.discard(work.job)
                work.job = work.worker = None
                work.state = State.WAITING
            elif work.state == State.READY:
                work.state = State.WAITING
        return events


def _queue_job_id(key: str) -> str:
    return key


def steps_from_graph(graph: BuildGraph) -> list[StepInfo]:
    """The scheduling view of a build graph's nodes."""
    remaining = graph.remaining_lengths()
    return [StepInfo(n.id, n.cache_key, n.arch, n.depends, remaining[n.id])
            for n in (graph.nodes[i] for i in graph.order)]

"""The controller's scheduling policy, as a state machine with no I/O.

Work is identified by cache key: the same key needed by two requests is one
piece of work, built once. Each call returns the events that follow from it;
the controller turns them into messages.

Fair share: a free slot goes to the highest priority class that has ready
work of the slot's arch; within a class, requests take turns (round-robin;
one that had nothing ready goes to the front), and within a request the
step with the longest remaining path goes first.
Every call costs what it changes, not what is queued: each work counts its
unbuilt dependencies, each request keeps a heap of its ready steps per arch,
each (arch, class) a ring of requests with ready steps, and each arch a heap
of workers by free slots. Work that no live request's graph holds is
forgotten, so memory follows the requests in flight.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from distbuild.scheduling_events import (
    Event,
    JobCancelled,
    JobStarted,
    RequestCancelled,
    RequestFailed,
    RequestFinished,
    RequestPlanned,
    State,
    StepBuilt,
    StepFailed,
    StepJoined,
    StepQueued,
    StepRequeued,
)
from distbuild.scheduling_workers import Worker, WorkerChanges

__all__ = [
    "PRIORITIES", "Event", "JobCancelled", "JobStarted", "RequestCancelled", "RequestFailed",
    "RequestFinished", "RequestPlanned", "Scheduler", "State", "StepBuilt", "StepFailed",
    "StepInfo", "StepJoined", "StepQueued", "StepRequeued", "steps_from_graph",
]

if TYPE_CHECKING:
    from distbuild.definitions import BuildGraph


@dataclass(frozen=True)
class StepInfo:
    """What scheduling needs to know of one graph node."""

    node_id: str
    cache_key: str
    arch: str
    depends: tuple[str, ...]  # node ids
    priority: int  # nodes on the longest chain from here to the end of the graph


# Request priority classes, served strictly in this order.
PRIORITIES = ("high", "normal", "low")


@dataclass(eq=False, slots=True)
class Work:
    key: str
    arch: str
    deps: tuple[str, ...]  # keys
    state: State = State.WAITING
    dependents: set[str] = field(default_factory=set)
    requests: dict[str, str] = field(default_factory=dict)  # request id -> node id
    priority: int = 0
    attempts: int = 0
    handed_back: int = 0  # attempts a draining worker gave back: not failures
    job: str | None = None
    worker: str | None = None
    unbuilt_deps: int = 0
    holders: int = 0  # live requests whose graph has this key


@dataclass(eq=False, slots=True)
class Request:
    id: str
    seq: int
    needed: set[str]  # keys this request must see built
    total: int
    keys: list[str]  # every key of its graph, built or not: what it holds in memory
    priority: str = "normal"
    built: set[str] = field(default_factory=set)
    ready: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # arch -> heap
    queued_in: set[str] = field(default_factory=set)  # archs whose ring holds this request


class Scheduler(WorkerChanges):
    """Requests, shared work and worker slots; every method returns the events it caused."""

    def __init__(self, retry_limit: int = 2, job_id: Callable[[str], str] | None = None):
        self.retry_limit = retry_limit
        self._jobs_made = 0
        # Job ids must be unique for the network's whole life: the controller
        # passes a generator backed by its database.
        self.job_id = job_id or self._next_job_id
        self.work: dict[str, Work] = {}
        self.requests: dict[str, Request] = {}
        self.workers: dict[str, Worker] = {}
        self.jobs: dict[str, str] = {}  # job id -> key
        self._seq = 0
        self._rings: dict[tuple[str, str], deque[str]] = {}  # (arch, class) -> request ids
        # arch -> heap of (-free slots, name, tiebreak, worker); stale entries are skipped.
        self._free: dict[str, list[tuple[int, str, int, Worker]]] = {}
        self._tiebreak = itertools.count()

    def _next_job_id(self, key: str) -> str:
        self._jobs_made += 1
        return f"{key[:16]}-{self._jobs_made}"

    # -- requests --------------------------------------------------------------------------

    def add_request(self, request_id: str, steps: Iterable[StepInfo], targets: Iterable[str],
                    cached: set[str], priority: str = "normal") -> list[Event]:
        """Plan a request: `targets` are node ids to produce, `cached` the keys already built."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
        steps = list(steps)
        by_id = {s.node_id: s for s in steps}
        events: list[Event] = []
        keys: dict[str, None] = {}
        created: list[Work] = []
        for step in steps:
            work = self.work.get(step.cache_key)
            if work is None:
                work = self.work[step.cache_key] = Work(
                    step.cache_key, step.arch, tuple({by_id[d].cache_key: None
                                                      for d in step.depends}))
                created.append(work)
            if work.key not in keys:
                # Held from here on, so that a request finishing below cannot drop it.
                keys[work.key] = None
                work.holders += 1
            if step.cache_key in cached:
                if work.state in (State.WAITING, State.READY, State.FAILED):
                    events += self._mark_built(work)[1]
            elif work.state in (State.BUILT, State.FAILED):
                # The cache no longer has it (or it failed for an earlier request): try again.
                if work.state == State.BUILT:
                    for dep_key in work.dependents:
                        self.work[dep_key].unbuilt_deps += 1
                work.state, work.attempts, work.handed_back = State.WAITING, 0, 0
            work.priority = max(work.priority, step.priority)
        for work in created:
            for dep in work.deps:
                dep_work = self.work[dep]
                dep_work.dependents.add(work.key)
                if dep_work.state != State.BUILT:
                    work.unbuilt_deps += 1
        needed = self._needed(by_id, targets)
        self._seq += 1
        request = Request(request_id, self._seq, set(needed), len(steps), list(keys),
                          priority)
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
            work = self.work[key]
            if work.state == State.READY:  # already queued for another request
                self._queue(request, work)
            else:
                events += self._promote(work)
        if not needed:
            self._detach(request_id)
            events.append(RequestFinished(request_id))
        return events + self.dispatch()

    def _needed(self, by_id: dict[str, StepInfo], targets: Iterable[str]) -> list[str]:
        """Unbuilt targets and every unbuilt node in their closures (staging needs them all)."""
        needed: dict[str, None] = {}
        stack = [t for t in targets if self.work[by_id[t].cache_key].state != State.BUILT]
        seen: set[str] = set()
        while stack:
            nid = stack.pop()
            if nid in seen:
                continue
            seen.add(nid)
            key = by_id[nid].cache_key
            if self.work[key].state != State.BUILT:
                needed[key] = None
            stack.extend(by_id[nid].depends)
        return list(needed)

    def cancel_request(self, request_id: str) -> list[Event]:
        """Drop a request; work no other request needs is cancelled."""
        if request_id not in self.requests:
            return []
        return [*self._detach(request_id), RequestCancelled(request_id)]

    # -- jobs ------------------------------------------------------------------------------

    def dispatch(self) -> list[Event]:
        """Give ready work to free slots: by class, requests in turn, longest path first."""
        events: list[Event] = []
        for arch, free in self._free.items():
            while free:
                _, _, _, worker = free[0]
                if self.workers.get(worker.name) is not worker or -free[0][0] != worker.free \
                        or worker.away or worker.draining:
                    # A stale entry (the worker left or its count changed), or a worker
                    # that takes nothing new: on its return it is a new Worker entry.
                    heapq.heappop(free)
                    continue
                work = self._next_ready(arch)
                if work is None:
                    break
                heapq.heappop(free)
                work.attempts += 1
                job = self.job_id(work.key)
                work.state, work.job, work.worker = State.RUNNING, job, worker.name
                worker.jobs.add(job)
                self._slot_freed(worker)
                self.jobs[job] = work.key
                events.append(JobStarted(job, work.key, worker.name, work.attempts,
                                         dict(work.requests)))
        return events

    def job_requests(self, job: str) -> dict[str, str]:
        """Which requests (request id -> node id) follow this job's output."""
        key = self.jobs.get(job)
        return dict(self.work[key].requests) if key else {}

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
        self._slot_freed(worker)
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
        self._take_back(work.worker, job)
        return work

    # -- internals -------------------------------------------------------------------------

    def _slot_freed(self, worker: Worker) -> None:
        """Record the worker's new free count (older heap entries for it become stale)."""
        if worker.free > 0:
            free = self._free.setdefault(worker.arch, [])
            heapq.heappush(free, (-worker.free, worker.name, next(self._tiebreak), worker))
            if len(free) > 64 + 4 * len(self.workers):
                # Workers that come and go while nothing is ready leave stale entries
                # that no dispatch pops: start again from the workers there are.
                free[:] = [(-w.free, w.name, next(self._tiebreak), w)
                           for w in self.workers.values() if w.arch == worker.arch and w.free]
                heapq.heapify(free)

    def _take_back(self, name: str | None, job: str) -> None:
        worker = self.workers.get(name or "")
        if worker is not None and job in worker.jobs:
            worker.jobs.discard(job)
            self._slot_freed(worker)

    def _next_ready(self, arch: str) -> Work | None:
        """Pop the step the next free slot of `arch` should run, or None."""
        for priority in PRIORITIES:
            ring = self._rings.get((arch, priority))
            while ring:
                request = self.requests.get(ring.popleft())
                if request is None:
                    continue  # ended; its heaps went with it
                heap = request.ready.get(arch, [])
                work = None
                while heap and work is None:
                    work = self.work.get(heapq.heappop(heap)[1])
                    if work is None or work.state != State.READY or \
                            request.id not in work.requests:
                        work = None  # taken meanwhile, through another request, or dropped
                if heap:
                    ring.append(request.id)  # back of the line: the others take their turn
                else:
                    request.queued_in.discard(arch)
                if work is not None:
                    return work
        return None

    def _queue(self, request: Request, work: Work) -> None:
        heapq.heappush(request.ready.setdefault(work.arch, []), (-work.priority, work.key))
        if work.arch not in request.queued_in:
            # It had nothing ready, so it missed its turns: it goes first. A chain of
            # steps then starts each step on the next free slot, and finishes in its
            # critical path however much else is queued.
            request.queued_in.add(work.arch)
            self._rings.setdefault((work.arch, request.priority), deque()).appendleft(
                request.id)

    def _make_ready(self, work: Work) -> None:
        work.state = State.READY
        for rid in work.requests:
            self._queue(self.requests[rid], work)

    def _promote(self, work: Work) -> list[Event]:
        if work.state == State.WAITING and work.requests and work.unbuilt_deps == 0:
            self._make_ready(work)
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
            if len(request.built) >= len(request.needed):
                finished.append(rid)
        events: list[Event] = []
        for dep_key in sorted(work.dependents):
            dependent = self.work[dep_key]
            dependent.unbuilt_deps -= 1
            events += self._promote(dependent)
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
        for arch in request.queued_in:  # a ring no slot of its arch visits would keep it
            self._rings[(arch, request.priority)].remove(request_id)
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
                    self._take_back(work.worker, work.job)
                work.job = work.worker = None
                work.state = State.WAITING
            elif work.state == State.READY:
                work.state = State.WAITING
        for key in request.keys:
            work = self.work[key]
            work.holders -= 1
            if work.holders == 0:
                # No live request's graph has it: a later one finds it through the cache.
                del self.work[key]
                for dep in work.deps:
                    if dep in self.work:
                        self.work[dep].dependents.discard(key)
        return events


def steps_from_graph(graph: BuildGraph) -> list[StepInfo]:
    """The scheduling view of a build graph's nodes."""
    remaining = graph.remaining_lengths()
    return [StepInfo(n.id, n.cache_key, n.arch, n.depends, remaining[n.id])
            for n in (graph.nodes[i] for i in graph.order)]

"""The controller's scheduling policy, as a state machine with no I/O.

Work is identified by cache key: the same key needed by two requests is one
piece of work, built once. Each call returns the events that follow from it;
the controller turns them into messages.

Fair share: a free slot goes to the highest priority class that has ready
work of the slot's arch; within a class, requests take turns (round-robin;
one that had nothing ready goes to the front), and within a request the
step with the longest remaining path goes first.
Labels: a step may require labels (big-memory, kvm); it runs only on a worker
of its arch that has every one. Ready work is kept per pool, (arch, required
labels), and free workers per group, (arch, labels); a worker serves the pools
whose labels it has, the most demanding first, so labelled work is not starved
by plain work. Pools and groups are few (they come from settings), so this
keeps the per-event cost independent of the queue.
Every call costs what it changes, not what is queued: each work counts its
unbuilt dependencies, each request keeps a heap of its ready steps per pool,
each (pool, class) a ring of requests with ready steps, and each group a heap
of workers by free slots. Work that no live request's graph holds is
forgotten, so memory follows the requests in flight: a request that ends
gives up its running work at once, and the rest of its work in slices of a
few dozen keys per later call (`tidy`), so ending a big request is not one
long call either.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from distbuild.scheduling_events import (
    BUILT,
    FAILED,
    READY,
    RUNNING,
    WAITING,
    DispatchPending,
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
from distbuild.scheduling_index import WorkIndex
from distbuild.scheduling_plan import PlannedRequest, StepInfo, Work, plan_request
from distbuild.scheduling_queues import PRIORITIES, Pool, ReadyQueues, required_labels
from distbuild.scheduling_workers import Worker, WorkerChanges

# Keys of ended requests' work forgotten per dispatching call (about 0.05 ms: a
# request's work is spread over memory, a microsecond or two a key).
TIDY_SLICE = 32
# Keys of added requests' work moved into the index's shards per dispatching call.
SETTLE_SLICE = 128
# Jobs one call starts (about 7 us each). A request landing on hundreds of idle slots
# starts them over a few calls, each ending in DispatchPending, so no one call (and no
# reactor turn) grows with the farm's size.
START_LIMIT = 32

__all__ = [
    "PRIORITIES",
    "START_LIMIT",
    "DispatchPending",
    "Event",
    "JobCancelled",
    "JobStarted",
    "PlannedRequest",
    "Pool",
    "RequestCancelled",
    "RequestFailed",
    "RequestFinished",
    "RequestPlanned",
    "Scheduler",
    "State",
    "StepBuilt",
    "StepFailed",
    "StepInfo",
    "StepJoined",
    "StepQueued",
    "StepRequeued",
    "Work",
    "WorkIndex",
    "plan_request",
    "required_labels",
    "steps_from_graph",
]

if TYPE_CHECKING:
    from distbuild.definitions import BuildGraph


@dataclass(eq=False, slots=True)
class Request:
    id: str
    seq: int
    needed: set[str]  # keys this request must see built
    total: int
    work: dict[str, Work]  # every key of its graph, built or not: what it holds in memory
    priority: str = "normal"
    built: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)  # its needed keys running now
    ready: dict[Pool, list[tuple[int, str]]] = field(default_factory=dict)  # pool -> heap
    queued_in: set[Pool] = field(default_factory=set)  # pools whose ring holds this request


class Scheduler(ReadyQueues, WorkerChanges):
    """Requests, shared work and worker slots; every method returns the events it caused."""

    def __init__(self, retry_limit: int = 2, job_id: Callable[[str], str] | None = None):
        self.retry_limit = retry_limit
        self._jobs_made = 0
        # Job ids must be unique for the network's whole life: the controller
        # passes a generator backed by its database.
        self.job_id = job_id or self._next_job_id
        # Requests that ended whose work is not all tidied yet, and that work.
        self._ended: set[str] = set()
        self._untidy: deque[tuple[str, dict[str, Work]]] = deque()
        self._untidy_keys = 0
        self.work = WorkIndex(self._ended)
        self.requests: dict[str, Request] = {}
        self.workers: dict[str, Worker] = {}
        self.jobs: dict[str, str] = {}  # job id -> key
        self._seq = 0
        self._rings: dict[tuple[Pool, str], deque[str]] = {}  # (pool, class) -> request ids
        # Worker group -> heap of (-free slots, name, tiebreak, worker); stale entries skipped.
        self._free: dict[Pool, list[tuple[int, str, int, Worker]]] = {}
        # arch -> the label sets its pools require, most labels first.
        self._pools: dict[str, list[frozenset[str]]] = {}
        # Worker group -> the rings it takes from, in order: (pool, ring).
        self._eligible: dict[Pool, list[tuple[Pool, deque[str]]]] = {}
        self._tiebreak = itertools.count()

    def _next_job_id(self, key: str) -> str:
        self._jobs_made += 1
        return f"{key[:16]}-{self._jobs_made}"

    # -- requests --------------------------------------------------------------------------

    def add_request(self, request_id: str, steps: Iterable[StepInfo], targets: Iterable[str],
                    cached: set[str], priority: str = "normal") -> list[Event]:
        """Plan a request: `targets` are node ids to produce, `cached` the keys already built."""
        return self.add_planned(plan_request(request_id, steps, targets, cached, priority))

    def add_planned(self, plan: PlannedRequest) -> list[Event]:
        """Take over a request made by `plan_request`.

        Its own work is taken by reference, merged into the index shard by
        shard; only keys already held (shared with requests in flight) are
        looked at one by one, and its ready steps' events passed on.
        """
        rid = plan.request_id
        if rid in self._ended:
            self.tidy()  # its id is back while its last run's work is tidied: finish that
        held = self.work.held(plan.parts, plan.work, plan.seen)
        running = {k for k, work in held.items() if k in plan.cached
                   and work.state is RUNNING}
        if running:
            # In the cache, but its job here is not confirmed yet: the request waits for
            # the job, as for any other running work. Rare, so planned again here.
            plan = plan_request(plan.request_id, plan.steps, plan.targets,
                                plan.cached - running, plan.priority)
        mine = {key: plan.work[key] for key in held}  # what the plan made for those keys
        if plan.needed:
            for work in held.values():
                work.holders += 1
            plan.work.update(held)  # the request's own view: the work as held
            self.work.merge(plan.parts, held, plan.work)
        # (A request with nothing to build holds nothing: it ends in this call.)
        in_order = sorted(held, key=plan.position.__getitem__)
        events: list[Event] = []
        for key in in_order:
            work = held[key]
            work.priority = max(work.priority, mine[key].priority)
            if key in plan.cached:
                if work.state in (WAITING, READY, FAILED):
                    events += self._mark_built(work)[1]
            elif work.state in (BUILT, FAILED):
                # The cache no longer has it (or it failed for an earlier request): try again.
                if work.state is BUILT:
                    for dep_key in work.dependents:
                        self.work[dep_key].unbuilt_deps += 1
                work.state, work.attempts, work.handed_back = WAITING, 0, 0
        if not plan.needed:
            return [*events, RequestPlanned(rid, len(plan.steps), 0), RequestFinished(rid),
                    *self.dispatch()]
        for key in in_order:
            # This request's new work counted these as built exactly when they now are.
            held[key].dependents |= mine[key].dependents
        self._seq += 1
        request = Request(rid, self._seq, plan.needed, len(plan.steps), plan.work,
                          plan.priority, ready=plan.ready)
        self.requests[rid] = request
        events.append(RequestPlanned(rid, len(plan.steps), len(plan.needed)))
        for pool, heap in plan.ready.items():
            if heap:
                self._enter_ring(request, pool)
        # Planned as if new: what it planned for keys already held is decided below instead
        # (a heap entry for one then names the held work, which is checked when popped).
        events += [e for e in plan.queued if e.key not in held] if held else plan.queued
        for key in in_order:
            if key not in plan.needed:
                continue
            work = held[key]
            work.requests[rid] = plan.node_of[key]
            if work.state is RUNNING:
                request.running.add(key)
                events.append(StepJoined(key, work.worker or "", work.attempts,
                                         {rid: plan.node_of[key]}))
            elif work.state is READY:  # already queued for another request
                self._queue(request, work)
            else:
                events += self._promote(work)
        # No settling of the index here: adding a request costs its shared keys and its
        # ready steps; requests added back to back leave it to the calls that follow.
        events += self._start_jobs()
        self._tidy_some(settle=False)
        return events

    def fail_request(self, request_id: str, reason: str) -> list[Event]:
        """Fail a request for a reason of its own (not a step's): it waited too long."""
        if request_id not in self.requests:
            return []
        events = [*self._detach(request_id), RequestFailed(request_id, reason, "")]
        self._tidy_some()
        return events

    def cancel_request(self, request_id: str) -> list[Event]:
        """Drop a request; work no other request needs is cancelled."""
        if request_id not in self.requests:
            return []
        events = [*self._detach(request_id), RequestCancelled(request_id)]
        self._tidy_some()
        return events

    # -- jobs ------------------------------------------------------------------------------

    def dispatch(self) -> list[Event]:
        """Give ready work to free slots: by class, requests in turn, longest path first.

        At most START_LIMIT jobs start; if the call stops there, its last event is
        DispatchPending and the caller calls `dispatch` again.
        """
        events = self._start_jobs()
        self._tidy_some()
        return events

    def _start_jobs(self) -> list[Event]:
        events: list[Event] = []
        left = START_LIMIT
        for free in self._free.values():
            while free:
                if not left:
                    events.append(DispatchPending())
                    return events
                worker = free[0][3]
                if worker.away or worker.draining or -free[0][0] != worker.free \
                        or self.workers.get(worker.name) is not worker:
                    # A stale entry (the worker left or its count changed), or a worker
                    # that takes nothing new: on its return it is a new Worker entry.
                    heapq.heappop(free)
                    continue
                work = self._next_ready(worker)
                if work is None:
                    break  # the group's other workers could take no more than this one
                heapq.heappop(free)
                work.attempts += 1
                key, job = work.key, self.job_id(work.key)
                work.state, work.job, work.worker = RUNNING, job, worker.name
                requests = self.work.clean(work).requests
                for rid in requests:
                    self.requests[rid].running.add(key)
                worker.jobs.add(job)
                if worker.slots > len(worker.jobs):
                    self._slot_freed(worker)
                self.jobs[job] = key
                events.append(JobStarted(job, key, worker.name, work.attempts, dict(requests)))
                left -= 1
        return events

    def tidy(self, limit: int | None = None) -> bool:
        """Forget up to `limit` keys (all if None) of ended requests' work; True if some are left.

        Every call that dispatches does a slice of this; a controller may call it when idle.
        """
        untidy = self._untidy
        while untidy and (limit is None or limit > 0):
            rid, own = untidy[0]
            n = len(own) if limit is None else min(limit, len(own))
            for _ in range(n):
                self._forget(rid, *own.popitem())
            self._untidy_keys -= n
            if limit is not None:
                limit -= n
            if not own:
                untidy.popleft()
                self._ended.discard(rid)
        return bool(untidy)

    def _tidy_some(self, settle: bool = True) -> None:
        if self._untidy:
            # More per call while much is left, so memory stays bounded however fast
            # requests end.
            self.tidy(TIDY_SLICE + self._untidy_keys // 1024)
        if settle and self.work.waiting_keys:
            # Lookups look in the batches waiting too: more per call while many wait.
            self.work.settle(SETTLE_SLICE + self.work.waiting_keys // 1024)

    def _forget(self, rid: str, key: str, work: Work) -> None:
        """Ended request `rid` no longer holds `key`; with no holder left, it is dropped."""
        work.requests.pop(rid, None)
        if work.state is READY and not work.requests:
            work.state = WAITING  # ready for nobody: queued for no one
        work.holders -= 1
        if work.holders == 0:
            # No live request's graph has it: a later one finds it through the cache.
            self.work.drop(key)
            for dep in work.deps:
                below = self.work.get(dep)
                if below is not None:
                    below.dependents.discard(key)

    def _running(self, work: Work) -> None:
        for rid in work.requests:
            self.requests[rid].running.add(work.key)

    def _not_running(self, work: Work) -> None:
        for rid in self.work.clean(work).requests:
            self.requests[rid].running.discard(work.key)

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
        self._not_running(work)
        return work

    # -- internals -------------------------------------------------------------------------

    def _slot_freed(self, worker: Worker) -> None:
        """Record the worker's new free count (older heap entries for it become stale)."""
        if worker.free > 0:
            free = self._free.setdefault(worker.group, [])
            heapq.heappush(free, (-worker.free, worker.name, next(self._tiebreak), worker))
            if len(free) > 64 + 4 * len(self.workers):
                # Workers that come and go while nothing is ready leave stale entries
                # that no dispatch pops: start again from the workers there are.
                free[:] = [(-w.free, w.name, next(self._tiebreak), w)
                           for w in self.workers.values() if w.group == worker.group and w.free]
                heapq.heapify(free)

    def _take_back(self, name: str | None, job: str) -> None:
        worker = self.workers.get(name or "")
        if worker is not None and job in worker.jobs:
            worker.jobs.discard(job)
            self._slot_freed(worker)

    def _promote(self, work: Work) -> list[Event]:
        if work.state is WAITING and work.unbuilt_deps == 0 and \
                self.work.clean(work).requests:
            self._make_ready(work)
            return [StepQueued(work.key, dict(work.requests))]
        return []

    def _mark_built(self, work: Work) -> tuple[dict[str, tuple[int, int]], list[Event]]:
        """Record `work` as built: progress per request, and what that makes ready or finished."""
        work.state = BUILT
        progress: dict[str, tuple[int, int]] = {}
        finished = []
        for rid in list(self.work.clean(work).requests):
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
        work.state = FAILED
        self.work.clean(work)
        events: list[Event] = [StepFailed(work.key, worker, reason, dict(work.requests))]
        for rid in list(work.requests):
            events += self._detach(rid)
            events.append(RequestFailed(rid, reason, work.key))
        return events

    def _detach(self, request_id: str) -> list[Event]:
        """Forget a request; running work that nobody needs any more is cancelled.

        What it costs now is what it runs: the rest of its work still lists it
        until `tidy` gets there (reads through the index no longer see it).
        """
        request = self.requests.pop(request_id)
        for pool in request.queued_in:  # a ring no slot of its pool visits would keep it
            self._rings[(pool, request.priority)].remove(request_id)
        events: list[Event] = []
        for key in sorted(request.running):
            work = request.work[key]
            work.requests.pop(request_id, None)
            if work.requests or work.state is not RUNNING or not work.job:
                continue
            self.jobs.pop(work.job, None)
            if work.worker in self.workers:  # a lost worker has nothing to cancel
                events.append(JobCancelled(work.job, key, work.worker))
                self._take_back(work.worker, work.job)
            work.job = work.worker = None
            work.state = WAITING
        self._ended.add(request_id)
        self._untidy.append((request_id, request.work))
        self._untidy_keys += len(request.work)
        return events


def steps_from_graph(graph: BuildGraph,
                     step_labels: Mapping[str, Iterable[str]] | None = None) -> list[StepInfo]:
    """The scheduling view of a build graph's nodes; `step_labels` maps node id patterns
    (fnmatch) to the labels a worker needs to build the nodes they match."""
    remaining = graph.remaining_lengths()
    patterns = [(p, frozenset(labels)) for p, labels in (step_labels or {}).items()]
    return [StepInfo(n.id, n.cache_key, n.arch, n.depends, remaining[n.id],
                     required_labels(n.id, patterns))
            for n in (graph.nodes[i] for i in graph.order)]

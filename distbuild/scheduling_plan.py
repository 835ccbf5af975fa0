"""A request's steps made into scheduler work before the scheduler sees it: pure, per step.

`plan_request` does everything that costs one step at a time (work per cache
key, dependents, unbuilt dependencies, the steps to build, the ready heaps and
their events) as if the scheduler held nothing else. It needs no scheduler,
so it can run anywhere, also off the controller's reactor thread.
`Scheduler.add_planned` then takes the result by reference (split by index
shard here) and reconciles only the keys it already holds (shared with other
requests), so adding a request costs its overlap with the work in flight and
its ready steps, not its size. A plan is for the process that made it (the
shards follow `hash`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from distbuild.scheduling_events import BUILT, READY, WAITING, State, StepQueued
from distbuild.scheduling_index import partition
from distbuild.scheduling_queues import PRIORITIES, Pool

if TYPE_CHECKING:
    from distbuild.scheduling_index import WorkIndex


@dataclass(frozen=True)
class StepInfo:
    """What scheduling needs to know of one graph node."""

    node_id: str
    cache_key: str
    arch: str
    depends: tuple[str, ...]  # node ids
    priority: int  # nodes on the longest chain from here to the end of the graph
    labels: frozenset[str] = frozenset()  # a worker must have all of these to run it


@dataclass(eq=False, slots=True)
class Work:
    key: str
    arch: str
    deps: tuple[str, ...]  # keys
    state: State = WAITING
    dependents: set[str] = field(default_factory=set)
    requests: dict[str, str] = field(default_factory=dict)  # request id -> node id
    priority: int = 0
    attempts: int = 0
    handed_back: int = 0  # attempts a draining worker gave back: not failures
    job: str | None = None
    worker: str | None = None
    unbuilt_deps: int = 0
    holders: int = 0  # live requests whose graph has this key
    labels: frozenset[str] = frozenset()

    @property
    def pool(self) -> Pool:
        return (self.arch, self.labels)


@dataclass(eq=False, slots=True)
class PlannedRequest:
    """A request's work as if nothing else were held; `Scheduler.add_planned` takes it over."""

    request_id: str
    priority: str
    steps: list[StepInfo]
    targets: list[str]
    cached: set[str]
    work: dict[str, Work]  # key -> its work, in graph order, held once (by this request)
    parts: list[dict[str, Work]]  # the same split by index shard (`partition`)
    position: dict[str, int]  # key -> its place in `work`
    node_of: dict[str, str]  # key -> node id
    needed: set[str]  # keys to build: every unbuilt one the targets need
    ready: dict[Pool, list[tuple[int, str]]]  # heaps of the needed work nothing holds up
    queued: list[StepQueued]  # the events for those
    # (index generation, keys it held then): which keys are shared, looked at ahead.
    seen: tuple[int, set[str]] | None = None


def plan_request(request_id: str, steps: Iterable[StepInfo], targets: Iterable[str],
                 cached: set[str], priority: str = "normal",
                 held_by: WorkIndex | None = None) -> PlannedRequest:
    """Plan a request: `targets` are node ids to produce, `cached` the keys already built.

    With `held_by` (the scheduler's `work`; this may run on another thread), the keys
    it holds already are looked up here, so `add_planned` need only check them.
    """
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
    steps, targets = list(steps), list(targets)
    by_id = {s.node_id: s for s in steps}
    work: dict[str, Work] = {}
    for step in steps:
        w = work.get(step.cache_key)
        if w is None:
            work[step.cache_key] = Work(
                step.cache_key, step.arch,
                tuple({by_id[d].cache_key: None for d in step.depends}),
                BUILT if step.cache_key in cached else WAITING,
                priority=step.priority, holders=1, labels=frozenset(step.labels))
        else:
            w.priority = max(w.priority, step.priority)
    for w in work.values():
        for dep in w.deps:
            below = work[dep]
            below.dependents.add(w.key)
            if below.state is not BUILT:
                w.unbuilt_deps += 1
    node_of = {s.cache_key: s.node_id for s in steps}
    needed = _needed(by_id, work, targets)
    ready: dict[Pool, list[tuple[int, str]]] = {}
    queued: list[StepQueued] = []
    for key in needed:
        w = work[key]
        w.requests[request_id] = node_of[key]
        if w.unbuilt_deps == 0:
            w.state = READY
            ready.setdefault(w.pool, []).append((-w.priority, key))
            queued.append(StepQueued(key, {request_id: node_of[key]}))
    for heap in ready.values():
        heapq.heapify(heap)
    parts = partition(work)
    return PlannedRequest(request_id, priority, steps, targets, cached, work, parts,
                          {key: i for i, key in enumerate(work)}, node_of, set(needed),
                          ready, queued, held_by.seen(parts) if held_by is not None else None)


def _needed(by_id: dict[str, StepInfo], work: dict[str, Work],
            targets: list[str]) -> list[str]:
    """Unbuilt targets and every unbuilt node in their closures (staging needs them all)."""
    needed: dict[str, None] = {}
    stack = [t for t in targets if work[by_id[t].cache_key].state is not BUILT]
    seen: set[str] = set()
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        key = by_id[nid].cache_key
        if work[key].state is not BUILT:
            needed[key] = None
        stack.extend(by_id[nid].depends)
    return list(needed)

"""The scheduler's ready queues: which ready step the next free slot of a worker takes.

Ready work waits per pool, (arch, labels required), in each request's heap
(longest remaining path first); each (pool, class) keeps a ring of requests
with ready steps, which take turns. A worker serves the pools whose labels
it has, most labels first, classes strictly in order. Part of
`scheduling.Scheduler`, whose state these methods use.
"""

from __future__ import annotations

import fnmatch
import heapq
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from distbuild.scheduling_events import READY

if TYPE_CHECKING:
    from distbuild.scheduling import Request
    from distbuild.scheduling_plan import Work
    from distbuild.scheduling_workers import Worker

# Request priority classes, served strictly in this order.
PRIORITIES = ("high", "normal", "low")

Pool = tuple[str, frozenset[str]]  # (arch, labels required): ready work one worker can take


def required_labels(node_id: str, patterns: Iterable[tuple[str, frozenset[str]]]) -> frozenset[str]:
    """Every label of every pattern that matches `node_id` (case-sensitive fnmatch)."""
    out: frozenset[str] = frozenset()
    for pattern, labels in patterns:
        if fnmatch.fnmatchcase(node_id, pattern):
            out |= labels
    return out


class ReadyQueues:
    """Scheduler methods that queue ready work and pick it for a free slot."""

    requests: dict[str, Request]
    _rings: dict[tuple[Pool, str], deque[str]]
    _pools: dict[str, list[frozenset[str]]]
    _eligible: dict[Pool, list[tuple[Pool, deque[str]]]]  # worker group -> its rings

    def _next_ready(self, worker: Worker) -> Work | None:
        """Pop the step `worker`'s next free slot should run, or None."""
        rings = self._eligible.get(worker.group)
        if rings is None:
            rings = self._eligible[worker.group] = self._rings_for(worker)
        for pool, ring in rings:
            if ring:
                work = self._next_in(pool, ring)
                if work is not None:
                    return work
        return None

    def _rings_for(self, worker: Worker) -> list[tuple[Pool, deque[str]]]:
        """The rings `worker` takes from, in the order it does: class, then pool."""
        pools = [(worker.arch, labels) for labels in self._pools.get(worker.arch, ())
                 if labels <= worker.labels]
        return [(pool, self._rings[(pool, priority)]) for priority in PRIORITIES
                for pool in pools if (pool, priority) in self._rings]

    def _next_in(self, pool: Pool, ring: deque[str]) -> Work | None:
        """Pop the next step of `pool` from the requests of `ring`, which take turns."""
        while ring:
            request = self.requests.get(ring.popleft())
            if request is None:
                continue  # ended; its heaps went with it
            heap = request.ready.get(pool)
            work = None
            while heap and work is None:
                work = request.work.get(heapq.heappop(heap)[1])
                if work is None or work.state is not READY or \
                        request.id not in work.requests:
                    work = None  # taken meanwhile, or through another request
            if heap:
                ring.append(request.id)  # back of the line: the others take their turn
            else:
                request.queued_in.discard(pool)
            if work is not None:
                return work
        return None

    def _queue(self, request: Request, work: Work) -> None:
        pool = work.pool
        heapq.heappush(request.ready.setdefault(pool, []), (-work.priority, work.key))
        if pool not in request.queued_in:
            self._enter_ring(request, pool)

    def _enter_ring(self, request: Request, pool: Pool) -> None:
        """`request` has ready work in `pool` again (or for the first time)."""
        # It had nothing ready, so it missed its turns: it goes first. A chain of
        # steps then starts each step on the next free slot, and finishes in its
        # critical path however much else is queued.
        request.queued_in.add(pool)
        ring = self._rings.get((pool, request.priority))
        if ring is None:
            ring = self._rings[(pool, request.priority)] = deque()
            self._eligible.clear()  # the workers that serve it must look at it
            arch, labels = pool
            known = self._pools.setdefault(arch, [])
            if labels not in known:
                known.append(labels)
                known.sort(key=lambda labels: (-len(labels), sorted(labels)))
        ring.appendleft(request.id)

    def _make_ready(self, work: Work) -> None:
        work.state = READY
        for rid in work.requests:
            self._queue(self.requests[rid], work)

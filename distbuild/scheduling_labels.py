"""Which ready steps wait for worker labels no connected worker has: pure queries.

These run on a status request or a periodic check, not on every event, so
they may look at every worker and a request's ready heaps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distbuild.scheduling import PRIORITIES, Pool, State

if TYPE_CHECKING:
    from distbuild.scheduling import Scheduler


def missing_labels(sched: Scheduler, pool: Pool) -> list[str] | None:
    """Labels `pool`'s steps need that no worker able to take work offers; None if one can."""
    arch, required = pool
    best: set[str] | None = None
    for worker in sched.workers.values():
        if worker.arch != arch or worker.away or worker.draining:
            continue
        lacking = set(required - worker.labels)
        if not lacking:
            return None
        if best is None or len(lacking) < len(best):
            best = lacking
    return sorted(required if best is None else best)


def waiting_for_labels(sched: Scheduler, request_id: str) -> dict[str, list[str]]:
    """Request `request_id`'s ready steps (node id -> missing labels) no worker can take."""
    request = sched.requests.get(request_id)
    if request is None:
        return {}
    out: dict[str, list[str]] = {}
    for pool in sorted(request.queued_in, key=lambda p: (p[0], sorted(p[1]))):
        if not pool[1]:
            continue
        missing = missing_labels(sched, pool)
        if missing is None:
            continue
        for _, key in sorted(request.ready.get(pool, ())):
            work = sched.work.get(key)
            if work is not None and work.state == State.READY and request_id in work.requests:
                out[work.requests[request_id]] = missing
    return out


def starved(sched: Scheduler) -> dict[str, str]:
    """Requests with a ready step no worker can take (request id -> why), for timing out."""
    out: dict[str, str] = {}
    pools = {pool for (pool, _) in sched._rings if pool[1]}
    for pool in sorted(pools, key=lambda p: (p[0], sorted(p[1]))):
        missing = missing_labels(sched, pool)
        if missing is None:
            continue
        for priority in PRIORITIES:
            for rid in sched._rings.get((pool, priority), ()):
                if rid in out or rid not in sched.requests:
                    continue
                steps = waiting_for_labels(sched, rid)
                if steps:
                    nid, lacking = next(iter(steps.items()))
                    out[rid] = (f"{nid} needs a {pool[0]} worker with label(s) "
                                f"{', '.join(lacking)}, and no connected worker has them")
    return out


def describe(steps: dict[str, list[str]]) -> list[str]:
    """One line per waiting step, for status output."""
    return [f"{nid}: waiting for a worker with label(s) {', '.join(labels)}"
            for nid, labels in steps.items()]

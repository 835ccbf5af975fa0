"""The order in which the scheduler will start its ready steps, for `distbuild queue`.

Pure, like the scheduler: the scheduler itself is asked, on a deep copy given
one extra worker per arch with a slot for every ready step; the order in
which the copy's `dispatch` starts them is the answer. So the queue shown is
whatever the dispatch policy (priority classes, fair share, critical path)
makes it, and the real scheduler is not touched.
"""

from __future__ import annotations

import copy

from distbuild.scheduling import JobStarted, Scheduler, State, Work


def _any_job_id(key: str) -> str:
    return key


def dispatch_order(scheduler: Scheduler) -> list[Work]:
    """Ready work in the order `scheduler.dispatch` will hand it out, arch by arch."""
    ready: dict[str, int] = {}
    for work in scheduler.work.values():
        if work.state == State.READY and work.requests:
            ready[work.arch] = ready.get(work.arch, 0) + 1
    if not ready:
        return []
    # The controller's job ids count attempts in its database: the copy must not.
    job_id = scheduler.__dict__.get("job_id")
    if job_id is not None:
        scheduler.job_id = _any_job_id
    try:
        clone = copy.deepcopy(scheduler)
    finally:
        if job_id is not None:
            scheduler.job_id = job_id
    order: list[Work] = []
    for arch, count in sorted(ready.items()):
        for event in clone.add_worker(f"\0queue {arch}", arch, count):
            if isinstance(event, JobStarted):
                order.append(scheduler.work[event.key])
    return order

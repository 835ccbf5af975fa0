"""The order in which the scheduler will start its ready steps, for `distbuild queue`.

Pure, like the scheduler: the scheduler itself is asked, on a copy given
one extra worker per pool (arch and required labels) with a slot for every
ready step; the order in
which the copy's `dispatch` starts them is the answer. So the queue shown is
whatever the dispatch policy (priority classes, fair share, critical path)
makes it, and the real scheduler is not touched.
"""

from __future__ import annotations

import gc
import itertools
import pickle

from distbuild.scheduling import JobStarted, Scheduler, State, Work


def _any_job_id(key: str) -> str:
    return key


def _copy(scheduler: Scheduler) -> Scheduler:
    """A deep copy made by a pickle round trip (twice as fast as copy.deepcopy here).

    Stand-ins for what a copy must not share or cannot pickle, while it is made: the
    controller's job ids count attempts in its database, and itertools counters (heap
    tie-breaks) will not pickle from Python 3.14; the copy's new entries have names
    of their own, so its counters may start again.
    """
    saved = {name: value for name, value in vars(scheduler).items()
             if name == "job_id" or isinstance(value, itertools.count)}
    for name in saved:
        setattr(scheduler, name, None)
    # The copy is thousands of small objects made at once: no cyclic GC passes meanwhile.
    collecting = gc.isenabled()
    gc.disable()
    try:
        clone = pickle.loads(pickle.dumps(scheduler, protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        if collecting:
            gc.enable()
        for name, value in saved.items():
            setattr(scheduler, name, value)
    for name in saved:
        setattr(clone, name, _any_job_id if name == "job_id" else itertools.count())
    return clone


def dispatch_order(scheduler: Scheduler) -> list[Work]:
    """Ready work in the order `scheduler.dispatch` will hand it out, pool by pool."""
    ready: dict[tuple[str, frozenset[str]], int] = {}
    for work in scheduler.work.values():
        if work.state == State.READY and work.requests:
            ready[work.pool] = ready.get(work.pool, 0) + 1
    if not ready:
        return []
    clone = _copy(scheduler)
    order: list[Work] = []
    # One stand-in worker per (arch, labels) pool, with exactly that pool's labels, so
    # labelled steps are listed too and each stand-in takes only its own pool's work.
    for (arch, labels), count in sorted(ready.items(), key=lambda i: (i[0][0], sorted(i[0][1]))):
        name = f"\0queue {arch} {','.join(sorted(labels))}"
        for event in clone.add_worker(name, arch, count, labels=labels):
            if isinstance(event, JobStarted):
                order.append(scheduler.work[event.key])
    return order

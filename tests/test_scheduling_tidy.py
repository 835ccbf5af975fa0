"""A request that ends gives up its work in slices (`tidy`); a request added waits in a batch
until later calls move it into the index (`settle`); plans that looked ahead at the index."""

import math

from distbuild.scheduling import (
    SETTLE_SLICE,
    TIDY_SLICE,
    JobCancelled,
    JobStarted,
    RequestFailed,
    RequestFinished,
    Scheduler,
    StepInfo,
    StepJoined,
    StepQueued,
    plan_request,
)
from distbuild.scheduling_index import MERGES_KEPT
from tests.test_scheduling import Farm, chain, ids, of, wide


def mentioned(events) -> set[str]:
    """Every request id the events name."""
    out = set()
    for e in events:
        out |= set(getattr(e, "requests", {}) or {})
        if getattr(e, "request_id", None):
            out.add(e.request_id)
    return out


def test_a_failed_request_gives_its_work_back_in_slices_until_none_is_left():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 1)
    steps = wide("big", 5 * TIDY_SLICE)
    job = of(sched.add_request("big", steps, ids(steps), set()), JobStarted)[0]
    events = sched.job_failed(job.job, "broken")
    assert RequestFailed("big", "broken", job.key) in events
    assert sched.requests == {} and sched.jobs == {}
    # Only a slice is forgotten in the failing call; what is left lists no request.
    assert len(sched.work) == len(steps) - TIDY_SLICE
    assert all(not work.requests for work in sched.work.values())
    calls = 0
    while sched.work:
        sched.add_worker(f"w{calls}", "x86_64", 1)  # any call that dispatches tidies a slice
        calls += 1
    assert calls == math.ceil(len(steps) / TIDY_SLICE) - 1
    assert not sched.tidy() and not sched._untidy and not sched._ended


def test_a_request_sharing_work_with_a_failed_one_still_being_tidied_gets_it_right():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 2)
    first = chain("c", 3) + wide("a", 3 * TIDY_SLICE)
    started = of(sched.add_request("a", first, ids(first), set()), JobStarted)
    assert [j.key for j in started] == ["c-0", "a-0"]
    c1 = of(sched.job_finished(started[0].job), JobStarted)
    assert [j.key for j in c1] == ["c-1"]
    events = sched.job_failed(started[1].job, "broken")
    assert JobCancelled(c1[0].job, "c-1", "w") in events  # ran for nobody now
    assert "c-1" in sched.work and sched._untidy  # a's work is not all tidied yet
    # b shares all of c; its cache query found c-0, which a built.
    second = chain("c", 3) + wide("b", 1)
    farm = Farm(sched)
    events = sched.add_request("b", second, ids(second), {"c-0"})
    assert StepQueued("c-1", {"b": "chunk:c/1"}) in events
    farm.take(events)
    log = list(events)
    while farm.running:
        events = sched.job_finished(farm.running.pop(0).job)
        farm.take(events)
        log += events
    assert "b" in farm.finished
    assert sorted(key for _, key in farm.started) == ["b-0", "c-1", "c-2"]  # each once
    assert mentioned(log) == {"b"}  # the failed request is in no later event
    sched.tidy()
    assert sched.work == {} and sched.requests == {}


def test_work_only_an_ended_request_needed_is_not_started_when_what_it_waits_for_is_built():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 1)
    base = chain("c", 2)
    running = of(sched.add_request("live", base, ids(base), set()), JobStarted)[0]
    # d-0 waits for c-0, which "live" runs; the padding comes later in d's graph and
    # is tidied first, so d-0 is still held (waiting) when c-0 is built.
    gone = [base[0], StepInfo("chunk:d/0", "d-0", "x86_64", ("chunk:c/0",), 5),
            *wide("pad", 2 * TIDY_SLICE)]
    sched.add_request("gone", gone, ids(gone), set())
    sched.cancel_request("gone")
    assert "d-0" in sched.work
    events = sched.job_finished(running.job)
    assert [e.key for e in of(events, StepQueued)] == ["c-1"]
    assert [j.key for j in of(events, JobStarted)] == ["c-1"]
    assert mentioned(events) == {"live"}
    # A new request for d-0 while it is still held finds it ready to run at once.
    events = sched.add_request("again", gone[:2], ids(gone[:2]), {"c-0"})
    assert StepQueued("d-0", {"again": "chunk:d/0"}) in events


def test_an_id_used_again_while_its_last_run_is_tidied_runs_as_new():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 1)
    steps = wide("x", 3 * TIDY_SLICE)
    sched.add_request("x", steps, ids(steps), set())
    sched.cancel_request("x")
    assert sched._untidy
    farm = Farm(sched)
    farm.take(sched.add_request("x", steps[:2], ids(steps[:2]), set()))
    while farm.running:
        farm.step()
    assert "x" in farm.finished
    assert sched.work == {} and sched.requests == {}


def test_a_plan_that_looked_ahead_sees_work_added_after_its_look():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 2)
    first, second = chain("c", 3) + wide("a", 1), chain("c", 3) + wide("b", 1)
    # r2 is planned first (its look finds nothing held), r1 is added before it.
    late = plan_request("r2", second, ids(second), set(), held_by=sched.work)
    farm = Farm(sched)
    farm.take(sched.add_planned(plan_request("r1", first, ids(first), set(),
                                             held_by=sched.work)))
    events = sched.add_planned(late)
    assert [e.key for e in of(events, StepJoined)] == ["c-0"]
    farm.take(events)
    while farm.running:
        farm.step()
    assert set(farm.finished) == {"r1", "r2"}
    assert sorted(key for _, key in farm.started) == ["a-0", "b-0", "c-0", "c-1", "c-2"]
    assert sched.work == {}


def test_a_plan_that_looked_ahead_long_before_looks_again():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 1)
    shared = chain("c", 1)
    late = plan_request("late", shared + wide("l", 1), ["chunk:c/0", "chunk:l/0"], set(),
                        held_by=sched.work)
    farm = Farm(sched)
    farm.take(sched.add_request("first", shared, ids(shared), set()))
    for r in range(MERGES_KEPT):  # more merges than the index keeps track of
        farm.take(sched.add_request(f"other{r}", wide(f"o{r}", 1), [f"chunk:o{r}/0"], set()))
    events = sched.add_planned(late)
    assert [e.key for e in of(events, StepJoined)] == ["c-0"]
    farm.take(events)
    while farm.running:
        farm.step()
    assert sorted(key for _, key in farm.started).count("c-0") == 1


def test_a_plan_that_looked_ahead_builds_what_was_forgotten_after_its_look():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 1)
    steps = chain("c", 2)
    farm = Farm(sched)
    farm.take(sched.add_request("r1", steps, ids(steps), set()))
    late = plan_request("r2", steps, ids(steps), set(), held_by=sched.work)
    assert late.seen is not None and late.seen[1] == {"c-0", "c-1"}
    while farm.running:
        farm.step()
    assert "r1" in farm.finished and sched.work == {}  # forgotten: the cache has them
    events = sched.add_planned(late)  # its cache query (made before r1 built them) found none
    assert [j.key for j in of(events, JobStarted)] == ["c-0"]
    farm.take(events)
    while farm.running:
        farm.step()
    assert "r2" in farm.finished and RequestFinished("r2") not in events


def test_a_request_added_is_found_while_it_waits_to_be_settled_and_after():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 1)
    steps = wide("k", 3 * SETTLE_SLICE)
    keys = {s.cache_key for s in steps}
    sched.add_request("r", steps, ids(steps), set())
    assert sched.work.waiting_keys == len(steps)  # adding it moved none of it
    assert set(sched.work) == keys and len(sched.work) == len(steps)
    assert all(sched.work[s.cache_key].requests == {"r": s.node_id} for s in steps)
    calls = 0
    while sched.work.waiting_keys:
        sched.add_worker(f"arm{calls}", "armv7lhf", 1)  # dispatches (nothing): settles a slice
        calls += 1
    assert calls <= 3
    assert set(sched.work) == keys and all(k in sched.work for k in keys)


def test_work_forgotten_before_it_was_settled_does_not_come_back():
    sched = Scheduler()
    steps = wide("k", 3 * SETTLE_SLICE)
    sched.add_request("r", steps, ids(steps), set())
    sched.cancel_request("r")
    sched.tidy()  # all of it forgotten while its batch still waits
    assert sched.work == {} and sched.work.waiting_keys == 0
    for n in range(4):
        sched.add_worker(f"w{n}", "x86_64", 1)
    assert sched.work == {}

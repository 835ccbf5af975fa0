"""Planning a request apart from the scheduler (`plan_request`), then adding it (`add_planned`)."""

from distbuild.scheduling import (
    JobStarted,
    RequestFinished,
    Scheduler,
    StepJoined,
    StepQueued,
    plan_request,
)
from tests.test_scheduling import Farm, chain, ids, of, wide


def test_requests_planned_before_either_is_added_share_their_work():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 2)
    first, second = chain("c", 3) + wide("a", 1), chain("c", 3) + wide("b", 1)
    # Both planned with no scheduler in sight, as the controller's planning thread does.
    plans = [plan_request("r1", first, ids(first), set()),
             plan_request("r2", second, ids(second), set())]
    farm = Farm(sched)
    farm.take(sched.add_planned(plans[0]))
    events = sched.add_planned(plans[1])
    assert [e.key for e in of(events, StepJoined)] == ["c-0"]
    farm.take(events)
    while farm.running:
        farm.step()
    assert set(farm.finished) == {"r1", "r2"}
    built = [key for _, key in farm.started]
    assert sorted(built) == ["a-0", "b-0", "c-0", "c-1", "c-2"]  # each key once
    assert sched.work == {} and sched.requests == {}


def test_a_key_in_the_cache_whose_job_here_is_unconfirmed_is_waited_for():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 2)
    steps = chain("c", 2)
    job = of(sched.add_request("r1", steps[:1], ids(steps[:1]), set()), JobStarted)[0]
    # r2's cache query already saw c-0 (its upload landed) before r1's job is confirmed.
    events = sched.add_planned(plan_request("r2", steps, ids(steps), {"c-0"}))
    assert of(events, StepJoined) == [StepJoined("c-0", "w", 1, {"r2": "chunk:c/0"})]
    assert not of(events, StepQueued) and not of(events, JobStarted)
    events = sched.job_finished(job.job)
    assert [e.key for e in of(events, JobStarted)] == ["c-1"]
    assert all(w.unbuilt_deps >= 0 for w in sched.work.values())
    events = sched.job_finished(of(events, JobStarted)[0].job)
    assert RequestFinished("r2") in events and sched.work == {}

"""One scheduler call starts at most START_LIMIT jobs; the rest start in the calls after it,
which the controller makes on its next reactor turns (DispatchPending)."""

import itertools

from twisted.internet.task import Clock

from distbuild.protocol import messages as m
from distbuild.scheduling import START_LIMIT, DispatchPending, JobStarted, Scheduler
from tests.test_farm_views import _controller
from tests.test_scheduling import ids, of, wide


def idle_farm(workers: int) -> Scheduler:
    sched = Scheduler()
    for w in range(workers):
        sched.add_worker(f"w{w}", "x86_64", 1)
    return sched


def dispatch_until_done(sched: Scheduler, events) -> list[list[JobStarted]]:
    """The jobs each call started, calling `dispatch` while a call ends pending."""
    calls = [of(events, JobStarted)]
    while events and isinstance(events[-1], DispatchPending):
        events = sched.dispatch()
        calls.append(of(events, JobStarted))
    return calls


def test_a_request_on_many_idle_slots_starts_them_all_a_share_per_call():
    workers = 3 * START_LIMIT + 5
    sched = idle_farm(workers)
    steps = wide("big", 2 * workers)
    first = sched.add_request("big", steps, ids(steps), set())
    assert isinstance(first[-1], DispatchPending)
    calls = dispatch_until_done(sched, first)
    assert [len(c) for c in calls] == [START_LIMIT] * 3 + [5]
    jobs = [j for c in calls for j in c]
    # Every worker got one job, and each key started once.
    assert sorted(j.worker for j in jobs) == sorted(f"w{w}" for w in range(workers))
    assert len({j.key for j in jobs}) == workers
    assert sched.dispatch() == []  # nothing pending is left over


def test_a_call_under_the_limit_is_not_pending():
    sched = idle_farm(START_LIMIT)
    steps = wide("a", 3 * START_LIMIT)
    events = sched.add_request("a", steps, ids(steps), set())
    assert len(of(events, JobStarted)) == START_LIMIT
    assert not of(events, DispatchPending)


def test_requests_keep_taking_turns_across_the_calls():
    sched = Scheduler()
    a, b = wide("a", 2 * START_LIMIT), wide("b", 2 * START_LIMIT)
    sched.add_request("a", a, ids(a), set())
    sched.add_request("b", b, ids(b), set())
    # The slots arrive at once: one worker of many slots.
    calls = dispatch_until_done(sched, sched.add_worker("big", "x86_64", 2 * START_LIMIT))
    assert [len(c) for c in calls] == [START_LIMIT, START_LIMIT]
    order = [j.key.split("-")[0] for c in calls for j in c]
    assert order.count("a") == order.count("b") == START_LIMIT
    assert all(x != y for x, y in itertools.pairwise(order))  # they alternate


class Plan:
    """What `job_started` asks of a request's plan, for a test with no definitions."""

    def node_dict(self, nid: str) -> dict:
        return {"id": nid}

    def closure(self, nid: str) -> list:
        return []


class Link:
    def __init__(self, name: str, sent: dict):
        self.name, self.sent = name, sent

    def send(self, message) -> None:
        self.sent.setdefault(self.name, []).append(message)


def test_the_controller_starts_the_rest_on_its_next_turns(tmp_path):
    ctl = _controller(tmp_path)
    ctl.reactor = clock = Clock()
    sent: dict[str, list[m.Message]] = {}
    workers = 2 * START_LIMIT + 3
    for w in range(workers):
        ctl.workers[f"w{w}"] = Link(f"w{w}", sent)
        ctl.scheduler.add_worker(f"w{w}", "x86_64", 1)
    steps = wide("big", workers)
    events = ctl.scheduler.add_request("big", steps, ids(steps), set())
    ctl.plans["big"] = Plan()
    ctl.lognames["big"] = {s.node_id: f"{s.node_id}.log" for s in steps}
    # (Only the starts: what a request's other events do needs its whole plan.)
    ctl.apply([e for e in events if isinstance(e, JobStarted | DispatchPending)])
    assert len(sent) == START_LIMIT
    assert len(clock.getDelayedCalls()) == 1  # one call asked for, however many pend
    clock.advance(0)  # a test clock runs the turns it schedules too
    assert len(sent) == workers
    assert all(len(v) == 1 and isinstance(v[0], m.JobRun) for v in sent.values())
    assert not clock.getDelayedCalls()
    assert len(ctl.state.running_attempts()) == workers

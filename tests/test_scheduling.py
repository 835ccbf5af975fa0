"""The scheduling policy, driven synchronously: sharing, priorities, retries, failure, cancel."""

import pytest

from distbuild.definitions import Definitions, DirectorySource, build_graph
from distbuild.scheduling import (
    JobCancelled,
    JobStarted,
    RequestCancelled,
    RequestFailed,
    RequestFinished,
    RequestPlanned,
    Scheduler,
    StepBuilt,
    StepFailed,
    StepInfo,
    StepJoined,
    StepQueued,
    StepRequeued,
    steps_from_graph,
)
from tests.conftest import MORPHS

SYSTEM = "system:example-system-x86_64"


@pytest.fixture(scope="module")
def example():
    graph = build_graph(Definitions(DirectorySource(MORPHS)), "systems/example-system-x86_64.morph")
    return graph, steps_from_graph(graph)


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def started(events):
    return {e.requests and next(iter(e.requests.values())): e for e in of(events, JobStarted)}


def run_to_end(sched, events, limit=100):
    """Finish every started job until nothing runs; returns all events and the build order."""
    log, order = list(events), []
    pending = of(events, JobStarted)
    while pending and limit:
        limit -= 1
        job = pending.pop(0)
        order.append(job.key)
        new = sched.job_finished(job.job)
        log += new
        pending += of(new, JobStarted)
    return log, order


def test_longest_path_first_and_workers_share_the_leaves(example):
    _graph, steps = example
    sched = Scheduler()
    sched.add_worker("w1", "x86_64", 1)
    sched.add_worker("w2", "x86_64", 1)
    events = sched.add_request("r1", steps, [SYSTEM], cached=set())
    assert of(events, RequestPlanned)[0] == RequestPlanned("r1", 8, 8)
    jobs = of(events, JobStarted)
    assert {next(iter(j.requests.values())) for j in jobs} == {
        "chunk:example-core/libgreet", "chunk:example-core/base-files"}
    assert {j.worker for j in jobs} == {"w1", "w2"}


def test_longest_remaining_path_goes_first():
    # a -> b -> c is a chain of three; d stands alone. One slot: a must go first.
    steps = [StepInfo("chunk:s/d", "kd", "x86_64", (), 1),
             StepInfo("chunk:s/a", "ka", "x86_64", (), 3),
             StepInfo("chunk:s/b", "kb", "x86_64", ("chunk:s/a",), 2),
             StepInfo("chunk:s/c", "kc", "x86_64", ("chunk:s/b",), 1)]
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 1)
    _log, order = run_to_end(sched, sched.add_request("r", steps, ["chunk:s/c", "chunk:s/d"], set()))
    # b (2 left) beats d (1 left); c and d tie and go by key.
    assert order == ["ka", "kb", "kc", "kd"]


def test_a_request_runs_to_completion_in_dependency_order(example):
    graph, steps = example
    sched = Scheduler()
    sched.add_worker("w1", "x86_64", 2)
    log, order = run_to_end(sched, sched.add_request("r1", steps, [SYSTEM], cached=set()))
    position = {k: i for i, k in enumerate(order)}
    for node in graph.nodes.values():
        assert all(position[graph.nodes[d].cache_key] < position[node.cache_key]
                   for d in node.depends)
    assert len(order) == 8
    assert of(log, RequestFinished) == [RequestFinished("r1")]
    progress = [e.progress["r1"] for e in of(log, StepBuilt)]
    assert progress[-1] == (8, 8)


def test_cached_steps_are_not_built(example):
    graph, steps = example
    sched = Scheduler()
    sched.add_worker("w1", "x86_64", 4)
    core = {graph.nodes[n].cache_key for n in ("chunk:example-core/libgreet",
                                                "chunk:example-core/base-files",
                                                "stratum:example-core")}
    events = sched.add_request("r1", steps, [SYSTEM], cached=core)
    assert of(events, RequestPlanned)[0].unbuilt == 5
    assert not {j.key for j in of(events, JobStarted)} & core
    everything = {n.cache_key for n in graph.nodes.values()}
    again = sched.add_request("r2", steps, [SYSTEM], cached=everything)
    assert of(again, RequestFinished) == [RequestFinished("r2")]
    assert not of(again, JobStarted)


def test_two_requests_share_work_and_each_key_builds_once(example):
    _graph, steps = example
    sched = Scheduler()
    sched.add_worker("w1", "x86_64", 1)
    first = sched.add_request("r1", steps, [SYSTEM], cached=set())
    # r2 wants only the core stratum: it shares libgreet and base-files with r1.
    second = sched.add_request("r2", steps, ["stratum:example-core"], cached=set())
    assert of(second, RequestPlanned)[0].unbuilt == 3
    # r2 is told that the step it shares is already running for r1.
    joined = of(second, StepJoined)
    assert [j.requests for j in joined] == [{"r2": next(iter(of(first, JobStarted)[0].requests.values()))}]
    log, order = run_to_end(sched, first + second)
    assert len(order) == len(set(order)) == 8
    assert {e.request_id for e in of(log, RequestFinished)} == {"r1", "r2"}


def test_lost_worker_requeues_its_step_then_gives_up_after_retry_limit(example):
    _graph, steps = example
    sched = Scheduler(retry_limit=1)
    sched.add_worker("w1", "x86_64", 1)
    first = of(sched.add_request("r1", steps, [SYSTEM], cached=set()), JobStarted)[0]
    events = sched.add_worker("w2", "x86_64", 2) + sched.remove_worker("w1")
    requeued = of(events, StepRequeued)
    assert requeued and requeued[0].key == first.key and "w1" in requeued[0].reason
    restarted = [j for j in of(events, JobStarted) if j.key == first.key]
    assert restarted and restarted[0].worker == "w2" and restarted[0].attempt == 2
    # A late message from the lost worker's job changes nothing.
    assert sched.job_finished(first.job) == []
    events = sched.remove_worker("w2")
    assert of(events, RequestFailed)[0].reason.startswith("worker disconnected during the step")
    assert "gave up after 2 attempts" in of(events, StepFailed)[0].reason


def test_failed_step_fails_its_requests_and_others_go_on(example):
    _graph, steps = example
    sched = Scheduler()
    sched.add_worker("w1", "x86_64", 2)
    events = sched.add_request("r1", steps, [SYSTEM], cached=set())
    other = [StepInfo("chunk:x/solo", "k-solo", "x86_64", (), 1)]
    events += sched.add_request("r2", other, ["chunk:x/solo"], cached=set())
    jobs = {next(iter(j.requests.values())): j for j in of(events, JobStarted)}
    libgreet = jobs["chunk:example-core/libgreet"]
    events = sched.job_failed(libgreet.job, "make exited with status 2")
    assert of(events, RequestFailed) == [
        RequestFailed("r1", "make exited with status 2", libgreet.key)]
    # base-files was running only for r1: it is cancelled to free the worker.
    assert [c.job for c in of(events, JobCancelled)] == [jobs["chunk:example-core/base-files"].job]
    solo = of(events, JobStarted)
    assert [j.key for j in solo] == ["k-solo"]
    assert of(sched.job_finished(solo[0].job), RequestFinished) == [RequestFinished("r2")]


def test_cancel_stops_unshared_work_only(example):
    _graph, steps = example
    sched = Scheduler()
    sched.add_worker("w1", "x86_64", 2)
    events = sched.add_request("r1", steps, [SYSTEM], cached=set())
    events += sched.add_request("r2", steps, ["chunk:example-core/libgreet"], cached=set())
    jobs = {next(iter(j.requests.values())): j for j in of(events, JobStarted)}
    cancelled = sched.cancel_request("r1")
    assert of(cancelled, RequestCancelled) == [RequestCancelled("r1")]
    # libgreet is still wanted by r2; base-files was only r1's.
    assert [c.job for c in of(cancelled, JobCancelled)] == [jobs["chunk:example-core/base-files"].job]
    assert of(sched.job_finished(jobs["chunk:example-core/libgreet"].job), RequestFinished) == [
        RequestFinished("r2")]
    assert sched.cancel_request("r1") == []


def test_arch_must_match_and_slots_are_respected():
    sched = Scheduler()
    steps = [StepInfo(f"chunk:s/c{i}", f"k{i}", "armv7lhf", (), 1) for i in range(3)]
    sched.add_worker("x86", "x86_64", 4)
    events = sched.add_request("r1", steps, [s.node_id for s in steps], cached=set())
    assert not of(events, JobStarted) and len(of(events, StepQueued)) == 3
    events = sched.add_worker("arm", "armv7lhf", 2)
    assert len(of(events, JobStarted)) == 2
    assert all(j.worker == "arm" for j in of(events, JobStarted))


def test_failed_work_is_tried_again_for_a_new_request():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 1)
    step = [StepInfo("chunk:s/c", "k", "x86_64", (), 1)]
    job = of(sched.add_request("r1", step, ["chunk:s/c"], cached=set()), JobStarted)[0]
    sched.job_failed(job.job, "boom")
    again = of(sched.add_request("r2", step, ["chunk:s/c"], cached=set()), JobStarted)
    assert [j.key for j in again] == ["k"]


def test_released_slot_takes_the_next_step_before_the_first_is_confirmed():
    steps = [StepInfo("chunk:s/a", "ka", "x86_64", (), 2),
             StepInfo("chunk:s/b", "kb", "x86_64", (), 1),
             StepInfo("chunk:s/c", "kc", "x86_64", ("chunk:s/a",), 1)]
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 1)
    first = of(sched.add_request("r", steps, ["chunk:s/b", "chunk:s/c"], set()), JobStarted)
    assert [j.key for j in first] == ["ka"]
    # a's upload is being checked: b may start, c (which needs a) may not.
    freed = of(sched.release_slot(first[0].job), JobStarted)
    assert [j.key for j in freed] == ["kb"]
    assert sched.release_slot(first[0].job) == []
    after = sched.job_finished(first[0].job)
    assert not of(after, JobStarted)  # the slot is b's until b is released
    assert of(after, StepQueued)[0].key == "kc"


# -- fair share, priority, bounded memory ----------------------------------------------------


def chain(prefix: str, n: int) -> list[StepInfo]:
    """n steps, each needing the one before: a critical path of n."""
    return [StepInfo(f"chunk:{prefix}/{i}", f"{prefix}-{i}", "x86_64",
                     (f"chunk:{prefix}/{i - 1}",) if i else (), n - i) for i in range(n)]


def wide(prefix: str, n: int) -> list[StepInfo]:
    return [StepInfo(f"chunk:{prefix}/{i}", f"{prefix}-{i}", "x86_64", (), 1) for i in range(n)]


def ids(steps):
    return [s.node_id for s in steps]


class Farm:
    """Workers that finish their jobs in the order they got them, one per tick."""

    def __init__(self, sched: Scheduler):
        self.sched = sched
        self.running: list[JobStarted] = []
        self.started: list[tuple[int, str]] = []  # (tick, key)
        self.finished: dict[str, int] = {}  # request id -> tick
        self.tick = 0

    def take(self, events):
        new = of(events, JobStarted)
        self.running += new
        self.started += [(self.tick, j.key) for j in new]
        self.finished.update({e.request_id: self.tick for e in of(events, RequestFinished)})

    def step(self):
        self.tick += 1
        job = self.running.pop(0)
        self.take(self.sched.job_finished(job.job))


def test_a_small_request_is_not_stuck_behind_a_huge_one():
    sched = Scheduler()
    farm = Farm(sched)
    for w in range(4):
        farm.take(sched.add_worker(f"w{w}", "x86_64", 1))
    big = wide("big", 1000)
    farm.take(sched.add_request("big", big, ids(big), set()))
    for _ in range(10):
        farm.step()
    submitted = farm.tick
    small = chain("small", 5)
    farm.take(sched.add_request("small", small, ids(small)[-1:], set()))
    while "small" not in farm.finished:
        farm.step()
    starts = [t for t, key in farm.started if key.startswith("small")]
    # A step takes 4 ticks here (4 workers, one finishes per tick). The first step
    # starts on the next free slot, and each later one on the slot its parent frees.
    assert starts[0] == submitted + 1
    assert farm.finished["small"] - starts[0] == 5 * 4
    assert len([k for _, k in farm.started if k.startswith("big")]) < 100  # big still runs


def test_slots_go_round_robin_between_requests_longest_path_first_within_each():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 1)
    farm = Farm(sched)
    blocker = wide("x", 1)
    farm.take(sched.add_request("x", blocker, ids(blocker), set()))  # holds the only slot
    a, b = wide("a", 3), chain("b", 3) + wide("b2", 2)
    farm.take(sched.add_request("a", a, ids(a), set()))
    farm.take(sched.add_request("b", b, ids(b), set()))
    while farm.running:
        farm.step()
    order = [key for _, key in farm.started][1:]
    # a and b alternate (b, added last, had not had a turn yet); b's chain head
    # (path 3) beats its single steps (path 1).
    assert order[:4] == ["b-0", "a-0", "b-1", "a-1"]


def test_priority_classes_are_strict_and_round_robin_within_a_class():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 1)
    farm = Farm(sched)
    blocker = wide("x", 1)
    farm.take(sched.add_request("x", blocker, ids(blocker), set()))
    for name, priority in (("low", "low"), ("n1", "normal"), ("n2", "normal"), ("hi", "high")):
        steps = wide(name, 2)
        farm.take(sched.add_request(name, steps, ids(steps), set(), priority))
    while farm.running:
        farm.step()
    order = [key.rsplit("-", 1)[0] for _, key in farm.started][1:]
    assert order == ["hi", "hi", "n2", "n1", "n2", "n1", "low", "low"]


def test_shared_work_runs_at_the_best_priority_of_those_who_need_it():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 1)
    farm = Farm(sched)
    farm.take(sched.add_request("x", wide("x", 1), ["chunk:x/0"], set()))
    normal = wide("n", 3)
    farm.take(sched.add_request("n", normal, ids(normal), set()))
    farm.take(sched.add_request("hi", normal[2:], ids(normal[2:]), set(), "high"))
    farm.step()
    assert farm.started[-1][1] == "n-2"


def test_unknown_priority_is_refused():
    with pytest.raises(ValueError, match="high, normal, low"):
        Scheduler().add_request("r", wide("a", 1), ["chunk:a/0"], set(), "urgent")


def test_work_no_request_needs_is_forgotten_and_found_again_through_the_cache():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 2)
    farm = Farm(sched)
    for r in range(20):
        steps = chain("c", 3) + wide(f"own{r}", 2)
        farm.take(sched.add_request(f"r{r}", steps, ids(steps), {"c-0"} if r else set()))
        while farm.running:
            farm.step()
        assert f"r{r}" in farm.finished
        assert sched.work == {} and sched.requests == {} and sched.jobs == {}
    # Built and forgotten: a request whose cache query says c-1 and c-2 exist runs nothing.
    steps = chain("c", 3)
    events = sched.add_request("again", steps, ids(steps)[-1:], {"c-0", "c-1", "c-2"})
    assert of(events, RequestFinished) == [RequestFinished("again")] and not sched.work


def test_a_request_finished_by_a_cache_hit_keeps_the_work_another_request_holds():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 1)
    farm = Farm(sched)
    farm.take(sched.add_request("x", wide("x", 1), ["chunk:x/0"], set()))
    first = chain("c", 2)
    farm.take(sched.add_request("a", first[:1], ids(first[:1]), set()))
    # b's cache query finds c-0 built, which finishes a inside b's add_request.
    events = sched.add_request("b", first, ids(first), {"c-0"})
    assert RequestFinished("a") in events
    farm.take(events)
    while farm.running:
        farm.step()
    assert "b" in farm.finished and sched.work == {}


def test_nothing_is_left_behind_by_requests_no_worker_could_serve():
    sched = Scheduler()
    for r in range(100):
        steps = [StepInfo(f"chunk:arm{r}/{i}", f"arm{r}-{i}", "armv7lhf", (), 1)
                 for i in range(2)]
        sched.add_request(f"r{r}", steps, ids(steps), set())
        sched.cancel_request(f"r{r}")
        sched.add_worker("w", "x86_64", 1)  # rejoins again and again, nothing to run
    assert sched.work == {} and sched.requests == {}
    assert all(not ring for ring in sched._rings.values())
    assert sum(len(h) for h in sched._free.values()) <= 64 + 4


def test_a_worker_back_holding_its_job_keeps_it_and_one_without_it_runs_it_again(example):
    _graph, steps = example
    sched = Scheduler()
    sched.add_worker("w1", "x86_64", 1)
    first = of(sched.add_request("r1", steps, [SYSTEM], cached=set()), JobStarted)[0]
    assert sched.worker_away("w1") == []
    assert sched.jobs[first.job] == first.key  # away: its job still runs there
    events = sched.add_worker("w1", "x86_64", 1, held=[first.job])
    assert of(events, StepRequeued) == [] and sched.jobs[first.job] == first.key
    assert first.job in sched.workers["w1"].jobs
    # Back again, without it (a new process): the step runs again, attempt 2.
    events = sched.add_worker("w1", "x86_64", 1, held=[])
    assert [e.job for e in of(events, StepRequeued)] == [first.job]
    again = [j for j in of(events, JobStarted) if j.key == first.key]
    assert again and again[0].attempt == 2 and again[0].job != first.job


def test_job_ids_come_from_the_given_generator():
    made = iter(range(100, 200))
    sched = Scheduler(job_id=lambda key: f"{key[:4]}-{next(made)}")
    sched.add_worker("w1", "x86_64", 1)
    step = StepInfo("chunk:a", "k" * 64, "x86_64", (), 1)
    job = of(sched.add_request("r1", [step], ["chunk:a"], cached=set()), JobStarted)[0]
    assert job.job == "kkkk-100"


def test_a_draining_worker_gets_nothing_new_and_a_hand_back_is_not_a_failure(example):
    _graph, steps = example
    sched = Scheduler(retry_limit=0)
    sched.add_worker("w1", "x86_64", 1)
    first = of(sched.add_request("r1", steps, [SYSTEM], cached=set()), JobStarted)[0]
    sched.drain_worker("w1")
    events = sched.hand_back(first.job, "worker w1 stopped")
    requeued = of(events, StepRequeued)
    assert requeued[0].outcome == "handed-back" and requeued[0].job == first.job
    assert of(events, JobStarted) == [] and of(events, StepFailed) == []
    events = sched.add_worker("w2", "x86_64", 1)
    again = [j for j in of(events, JobStarted) if j.key == first.key]
    assert again and again[0].worker == "w2"
    # Even with no retries allowed, the step was not given up on: losing w2 now fails it.
    assert of(sched.remove_worker("w2"), RequestFailed)


def test_restored_jobs_wait_for_their_worker(example):
    _graph, steps = example
    sched = Scheduler()
    events = sched.add_request("r1", steps, [SYSTEM], cached=set())
    key = of(events, StepQueued)[0].key
    assert sched.restore_job("old-7", key, "w1", 1)
    assert not sched.restore_job("old-8", "nope", "w1", 1)
    events = sched.add_worker("w2", "x86_64", 1)
    assert key not in {j.key for j in of(events, JobStarted)}
    events = sched.add_worker("w1", "x86_64", 1, held=["old-7"])
    assert sched.jobs["old-7"] == key and of(events, StepRequeued) == []
    assert [e.key for e in of(sched.job_finished("old-7"), StepBuilt)] == [key]

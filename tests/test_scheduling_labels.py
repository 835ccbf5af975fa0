"""Worker labels in the pure scheduler: labelled steps go only to workers with every label."""

from distbuild.scheduling import (
    JobStarted,
    RequestFailed,
    Scheduler,
    StepInfo,
    required_labels,
    steps_from_graph,
)
from distbuild.scheduling_labels import starved, waiting_for_labels


def step(nid, deps=(), labels=(), prio=1):
    return StepInfo(nid, f"key-{nid}", "x86_64", tuple(deps), prio, frozenset(labels))


def started(events):
    return {e.key.removeprefix("key-"): e.worker for e in events if isinstance(e, JobStarted)}


def test_patterns_match_node_ids_and_their_labels_add_up():
    patterns = [("chunk:*/gcc*", frozenset({"big-memory"})), ("system:*", frozenset({"kvm"})),
                ("chunk:core/*", frozenset({"fast"}))]
    assert required_labels("chunk:core/gcc-stage2", patterns) == {"big-memory", "fast"}
    assert required_labels("system:base-x86_64", patterns) == {"kvm"}
    assert required_labels("stratum:core", patterns) == frozenset()


def test_labelled_step_runs_only_on_a_worker_with_every_label():
    sched = Scheduler()
    sched.add_worker("plain", "x86_64", 4)
    sched.add_worker("half", "x86_64", 4, labels=["kvm"])
    events = sched.add_request("r", [step("a"), step("b", labels=["kvm", "big-memory"])],
                               ["a", "b"], set())
    assert started(events) == {"a": "plain"}
    assert waiting_for_labels(sched, "r") == {"b": ["big-memory"]}
    events = sched.add_worker("big", "x86_64", 1, labels=["kvm", "big-memory", "extra"])
    assert started(events) == {"b": "big"}
    assert waiting_for_labels(sched, "r") == {}


def test_a_labelled_worker_takes_labelled_work_before_plain_work():
    sched = Scheduler()
    steps = [step(f"p{i}", prio=9) for i in range(3)] + [step("k", labels=["kvm"], prio=1)]
    sched.add_request("r", steps, [s.node_id for s in steps], set())
    events = sched.add_worker("kvm", "x86_64", 1, labels=["kvm"])
    assert started(events) == {"k": "kvm"}


def test_a_busy_plain_group_does_not_stop_a_free_labelled_worker():
    sched = Scheduler()
    sched.add_worker("plain", "x86_64", 8)  # most free slots: first in line, takes nothing
    sched.add_worker("kvm", "x86_64", 1, labels=["kvm"])
    events = sched.add_request("r", [step("k", labels=["kvm"])], ["k"], set())
    assert started(events) == {"k": "kvm"}


def test_a_step_waits_while_its_labelled_worker_is_away_and_runs_when_it_is_back():
    sched = Scheduler()
    sched.add_worker("plain", "x86_64", 1)
    sched.add_worker("kvm", "x86_64", 1, labels=["kvm"])
    sched.worker_away("kvm")
    sched.remove_worker("kvm")
    events = sched.add_request("r", [step("k", labels=["kvm"])], ["k"], set())
    assert started(events) == {}
    assert waiting_for_labels(sched, "r") == {"k": ["kvm"]}
    why = starved(sched)["r"]
    assert "k needs a x86_64 worker with label(s) kvm" in why
    assert started(sched.add_worker("kvm", "x86_64", 1, labels=["kvm"])) == {"k": "kvm"}
    assert starved(sched) == {}


def test_fail_request_ends_a_starved_request_with_its_reason():
    sched = Scheduler()
    sched.add_request("r", [step("k", labels=["kvm"])], ["k"], set())
    events = sched.fail_request("r", "too long")
    assert [e for e in events if isinstance(e, RequestFailed)] == [RequestFailed("r", "too long", "")]
    assert "r" not in sched.requests and sched.fail_request("r", "again") == []
    # A later request's ready step is queued again in its pool.
    events = sched.add_request("r2", [step("k", labels=["kvm"])], ["k"], set())
    assert started(sched.add_worker("kvm", "x86_64", 1, labels=["kvm"])) == {"k": "kvm"}


def test_steps_from_graph_applies_step_labels(tmp_path):
    from distbuild.definitions import Definitions, DirectorySource, build_graph
    from tests.conftest import MORPHS

    graph = build_graph(Definitions(DirectorySource(MORPHS)),
                        "systems/example-system-x86_64.morph")
    steps = steps_from_graph(graph, {"system:*": ["kvm"], "chunk:*": ["big"]})
    by_kind = {s.node_id.split(":")[0]: s.labels for s in steps}
    assert by_kind == {"system": {"kvm"}, "chunk": {"big"}, "stratum": frozenset()}


def test_a_reserved_slot_is_taken_from_the_worker_and_given_back():
    sched = Scheduler()
    sched.add_worker("w", "x86_64", 2)
    assert sched.reserve("w", "check-1") and sched.workers["w"].free == 1
    events = sched.add_request("r", [step("a"), step("b")], ["a", "b"], set())
    assert list(started(events).values()) == ["w"]  # one slot left for builds
    assert started(sched.unreserve("w", "check-1")) in ({"a": "w"}, {"b": "w"})
    assert not sched.reserve("w", "check-2")  # both slots build now
    assert not sched.reserve("gone", "check-3")


def test_the_queue_lists_labelled_steps_no_worker_can_take_yet():
    from distbuild.dispatchorder import dispatch_order

    sched = Scheduler()
    sched.add_worker("plain", "x86_64", 1)
    sched.add_request("r", [step("a"), step("b"), step("k", labels=["kvm"])],
                      ["a", "b", "k"], set())
    queued = [w.key.removeprefix("key-") for w in dispatch_order(sched)]
    assert sorted(queued) == ["b", "k"]
    # Asking for the order changes nothing: the real scheduler still has both ready.
    assert sorted(started(sched.add_worker("kvm", "x86_64", 2, labels=["kvm"])).items()) == \
        [("b", "kvm"), ("k", "kvm")]

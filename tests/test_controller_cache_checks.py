"""A big answer from the cache is applied a share per reactor turn, so replies to workers
are not held back behind it."""

from __future__ import annotations

from twisted.internet.task import Clock

from distbuild import tokens
from distbuild.controller.jobs import CacheChecks
from distbuild.protocol import messages as m
from tests.test_farm_views import _controller


def test_an_answer_is_applied_a_share_per_turn_until_all_of_it_is(tmp_path):
    ctl = _controller(tmp_path)
    ctl.reactor = clock = Clock()
    jobs = [f"{i:016x}-{i + 1}" for i in range(40)]
    for job in jobs:
        ctl.state.attempt_started(job, job[:16] * 4, "w1")
    checks = CacheChecks(ctl)
    checks._answered({job: (job[:16] * 4, m.JobFinished(job=job, seconds=1.0))
                      for job in jobs}, {job[:16] * 4: True for job in jobs})
    share = CacheChecks.APPLY_PER_TURN
    assert len(ctl.state.running_attempts()) == len(jobs) - share
    assert len(clock.getDelayedCalls()) == 1  # the rest, in a later turn
    clock.advance(0)  # (a test clock runs the turns after it too)
    assert ctl.state.running_attempts() == []
    assert {a["outcome"] for a in map(dict, ctl.state.db.execute("SELECT outcome FROM attempts"))
            } == {"built"}
    assert not clock.getDelayedCalls()


def test_a_job_with_the_caches_receipt_is_built_without_a_query(tmp_path):
    ctl = _controller(tmp_path)
    ctl.reactor = Clock()
    key, other = "a" * 64, "b" * 64
    jobs = {"j-1": tokens.issue(ctl.secret, tokens.stored_subject(key), 300),
            "j-2": tokens.issue(ctl.secret, tokens.stored_subject(other), 300),  # another key's
            "j-3": tokens.issue(ctl.secret, key, 300),  # the upload token, not a receipt
            "j-4": tokens.issue(b"not the shared secret!", tokens.stored_subject(key), 300),
            "j-5": tokens.issue(ctl.secret, tokens.stored_subject(key), -1),  # expired
            "j-6": ""}
    for job in jobs:
        ctl.state.attempt_started(job, key, "w1")
    checks = CacheChecks(ctl)
    checks.busy = True  # a query in flight: anything that needs one waits for the next
    for job, receipt in jobs.items():
        checks.add(key, m.JobFinished(job=job, seconds=1.0, receipt=receipt))
    outcomes = dict(ctl.state.db.execute("SELECT job, outcome FROM attempts"))
    assert outcomes == {"j-1": "built", **{job: "running" for job in jobs if job != "j-1"}}
    assert sorted(checks.waiting) == ["j-2", "j-3", "j-4", "j-5", "j-6"]

"""A big answer from the cache is applied a share per reactor turn, so replies to workers
are not held back behind it."""

from __future__ import annotations

from twisted.internet.task import Clock

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

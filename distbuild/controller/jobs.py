"""Worker messages: a worker's slots, its jobs' output and results, drain and hand-back.

A finished job frees its slot at once, but its step counts as built only once
the artifact cache, which took the upload only with a valid token, confirms it.
A worker that (re)connects lists the jobs it holds: each one this controller
still has running on that worker is adopted (job-adopt, with the number of
log lines already held so the worker resends only the rest); any other is
cancelled there. Its jobs it does not list run again elsewhere.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from twisted.python.failure import Failure

from distbuild import tokens
from distbuild.protocol import messages as m

if TYPE_CHECKING:
    from distbuild.controller.core import Controller


def on_worker_ready(ctl: Controller, link, msg: m.WorkerReady) -> None:
    name = link.hello.name
    link.labels = list(msg.labels)
    ctl.log(f"{link.peer}: arch {msg.arch}, {msg.slots} slot(s)"
            + (f", labels {', '.join(msg.labels)}" if msg.labels else "")
            + (f", holding {', '.join(msg.held)}" if msg.held else ""))
    mine = ctl.scheduler.workers.get(name)
    # A verify job is not kept: its slot went with the old link; it runs again.
    ctl.verifier.worker_lost(name)
    adopted = [job for job in msg.held if mine is not None and job in mine.jobs]
    for job in msg.held:
        if job in adopted:
            lines = ctl.logs.count(job)
            ctl.log(f"job {job}: kept on {name}, which still holds it ({lines} log lines here)")
            link.send(m.JobAdopt(job=job, lines=lines))
        else:
            link.send(m.JobCancel(job=job))
    ctl.lose_jobs(name, lambda: ctl.scheduler.add_worker(name, msg.arch, msg.slots, adopted,
                                                             msg.labels),
                  f"worker {name} came back without the step")


def on_worker_draining(ctl: Controller, link, msg: m.WorkerDraining) -> None:
    ctl.log(f"{link.peer} is draining: no new steps; it hands back what runs in "
            f"{msg.seconds:g} s")
    ctl.apply(ctl.scheduler.drain_worker(link.hello.name))


def on_job_handed_back(ctl: Controller, link, msg: m.JobHandedBack) -> None:
    ctl.log(f"job {msg.job}: handed back by {link.peer}: {msg.reason}")
    if ctl.verifier.owns(msg.job):
        ctl.verifier.requeue(msg.job, f"handed back: {msg.reason}")
        return
    ctl.apply(ctl.scheduler.hand_back(msg.job, msg.reason))


def on_job_output(ctl: Controller, link, msg: m.JobOutput) -> None:
    if msg.job not in ctl.scheduler.jobs:
        return  # a job given up on: its output goes nowhere
    first, lines = ctl.logs.add(msg.job, msg.first, msg.lines)
    if not lines:
        return
    for rid, nid in ctl.scheduler.job_requests(msg.job).items():
        ctl.tell(rid, m.StepOutput(request_id=rid, step=nid, lines=lines, first=first))


def on_job_finished(ctl: Controller, link, msg: m.JobFinished) -> None:
    key = ctl.scheduler.jobs.get(msg.job)
    if key is None:
        return
    ctl.job_results[key] = msg
    ctl.apply(ctl.scheduler.release_slot(msg.job))
    ctl.cache_checks.add(key, msg)


class CacheChecks:
    """Confirms finished jobs with the cache: one query in flight, for all that came meanwhile.

    A job-finished carrying the cache's receipt for the key (its upload's answer,
    signed with the secret the cache shares with this controller) needs no query.

    At farm rates a query per job would keep the thread pool busy with HTTP;
    batched, the cost per job falls as the rate rises. An answer is applied
    APPLY_PER_TURN jobs per reactor turn: applied whole (hundreds of jobs, each
    step built told to its initiators), it would hold back every worker's
    job-finished, and so its next job-run, until it was done.
    """

    APPLY_PER_TURN = 16

    def __init__(self, ctl: Controller):
        self.ctl = ctl
        self.waiting: dict[str, tuple[str, m.JobFinished]] = {}  # job -> (key, message)
        self.answered: deque[tuple[str, m.JobFinished, bool]] = deque()
        self.busy = False
        self._applying = False  # a turn is to apply more of `answered`

    def add(self, key: str, msg: m.JobFinished) -> None:
        """Check that the cache holds `key`, which job `msg.job` reports built."""
        if self._vouched(key, msg.receipt):
            self.answered.append((msg.job, msg, True))
            if not self._applying:
                self._apply()
            return
        self.waiting[msg.job] = (key, msg)
        if not self.busy:
            self._query()

    def _vouched(self, key: str, receipt: str) -> bool:
        """Whether `receipt` is the cache's own, current word that it holds `key` (signed
        with the secret it shares with this controller): then no query is needed."""
        if not receipt:
            return False
        try:
            tokens.verify(self.ctl.secret, tokens.stored_subject(key), receipt)
        except tokens.TokenError:
            return False  # forged, for another key, expired, or a rotated secret: ask
        return True

    def _query(self) -> None:
        batch, self.waiting = self.waiting, {}
        self.busy = True
        d = self.ctl.in_thread(self.ctl.cache.cached_sources,
                               sorted({key for key, _ in batch.values()}))
        d.addCallbacks(lambda answer: self._answered(batch, answer),
                       lambda f: self._unanswered(batch, f))
        d.addBoth(self._done)

    def _answered(self, batch: dict[str, tuple[str, m.JobFinished]],
                  answer: dict[str, bool]) -> None:
        self.answered.extend((job, msg, bool(answer.get(key)))
                             for job, (key, msg) in batch.items())
        if not self._applying:
            self._apply()

    def _apply(self) -> None:
        ctl = self.ctl
        self._applying = False
        try:
            with ctl.state.batch():  # one commit for the turn's share
                for _ in range(min(self.APPLY_PER_TURN, len(self.answered))):
                    job, msg, present = self.answered.popleft()
                    if present:
                        ctl.logs.close(job)
                        ctl.state.attempt_ended(job, "built", worker_seconds=msg.seconds,
                                                command_seconds=msg.command_seconds)
                        ctl.apply(ctl.scheduler.job_finished(job))
                    else:
                        job_failed(ctl, job, "the worker reported success but the "
                                   "artifact cache does not hold the step's artifacts")
        finally:
            if self.answered:
                self._applying = True
                ctl.reactor.callLater(0, self._apply)

    def _unanswered(self, batch: dict[str, tuple[str, m.JobFinished]], failure) -> None:
        with self.ctl.state.batch():
            for job in batch:
                job_failed(self.ctl, job, f"could not confirm the artifacts: "
                           f"{failure.getErrorMessage()}")

    def _done(self, result) -> None:
        self.busy = False
        if isinstance(result, Failure):
            self.ctl.log(f"checking finished jobs with the cache: {result.getTraceback()}")
        if self.waiting:
            self._query()


def on_job_failed(ctl: Controller, link, msg: m.JobFailed) -> None:
    if ctl.verifier.owns(msg.job):
        ctl.verifier.failed(msg)
        return
    key = ctl.scheduler.jobs.get(msg.job)
    if key is None:
        return  # cancelled by us; nothing waits for it
    ctl.job_results[key] = msg
    job_failed(ctl, msg.job, msg.reason)


def job_failed(ctl: Controller, job: str, reason: str) -> None:
    """Record `job` as failed and let the scheduler retry it or fail its requests."""
    ctl.logs.close(job)
    ctl.state.attempt_ended(job, "failed", reason)
    ctl.apply(ctl.scheduler.job_failed(job, reason))


HANDLERS = {
    m.WorkerReady: on_worker_ready,
    m.WorkerDraining: on_worker_draining,
    m.JobHandedBack: on_job_handed_back,
    m.JobOutput: on_job_output,
    m.JobFinished: on_job_finished,
    m.JobFailed: on_job_failed,
}

"""Applying the scheduler's events: messages to workers and initiators, state, log lines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from distbuild import tokens
from distbuild.controller.settings import TOKEN_TTL
from distbuild.protocol import messages as m
from distbuild.scheduling import (
    DispatchPending,
    JobCancelled,
    JobStarted,
    RequestCancelled,
    RequestFailed,
    RequestFinished,
    RequestPlanned,
    StepBuilt,
    StepFailed,
    StepJoined,
    StepQueued,
    StepRequeued,
)

if TYPE_CHECKING:
    from distbuild.controller.core import Controller


def request_planned(ctl: Controller, e: RequestPlanned) -> None:
    plan = ctl.plans[e.request_id]
    cached = {n.id: n.cache_key for n in plan.graph.nodes.values()
              if n.cache_key in plan.cached}
    ctl.state.planned(e.request_id, [], e.total, e.unbuilt)
    ctl.freezer.planned(e.request_id, e.total)
    ctl.tell(e.request_id, m.GraphingFinished(
        request_id=e.request_id, total=e.total, unbuilt=e.unbuilt,
        system_cache_key=plan.graph.system.cache_key, cached=cached,
        log_names=ctl.lognames[e.request_id], warnings=plan.warnings))


def step_queued(ctl: Controller, e: StepQueued) -> None:
    ctl.state.step_state(e.requests, "ready")
    for rid, nid in e.requests.items():
        ctl.tell(rid, m.StepReady(request_id=rid, step=nid, log_name=ctl.lognames[rid][nid]))


def job_started(ctl: Controller, e: JobStarted) -> None:
    rid, nid = next(iter(e.requests.items()))
    plan = ctl.plans[rid]
    run = m.JobRun(job=e.job, step=plan.node_dict(nid),
                   closure=plan.closure(nid),
                   trove_git_url=ctl.settings.trove_git_url,
                   artifact_cache_url=ctl.settings.artifact_cache_url,
                   token=tokens.issue(ctl.secret, e.key, TOKEN_TTL))
    # Recorded before it is sent: a controller killed in between still knows of the job.
    ctl.state.attempt_started(e.job, e.key, e.worker, rid, e.attempt)
    ctl.state.step_state(e.requests, "running")
    ctl.workers[e.worker].send(run)
    ctl.log(f"{nid} started on {e.worker} (job {e.job})")
    for rid, nid in e.requests.items():
        ctl.tell(rid, m.StepStarted(request_id=rid, step=nid, worker=e.worker, job=e.job,
                                    log_name=ctl.lognames[rid][nid], attempt=e.attempt))


def step_joined(ctl: Controller, e: StepJoined) -> None:
    work = ctl.scheduler.work.get(e.key)
    job = (work.job if work else None) or ""
    for rid, nid in e.requests.items():
        for link in ctl.watchers.get(rid, ()):
            replay(ctl, link, rid, nid, job, e.worker, e.attempt)


def replay(ctl: Controller, link, rid: str, nid: str, job: str, worker: str, attempt: int,
           start: int = 0) -> None:
    """Tell one initiator that `job` runs step `nid`, with its log from line `start`."""
    link.send(m.StepStarted(request_id=rid, step=nid, worker=worker, job=job, attempt=attempt,
                            log_name=ctl.lognames[rid][nid]))
    for first, lines in ctl.logs.read(job, start):
        link.send(m.StepOutput(request_id=rid, step=nid, lines=lines, first=first))


def step_built(ctl: Controller, e: StepBuilt) -> None:
    result = ctl.job_results.pop(e.key, None)
    seconds = result.seconds if isinstance(result, m.JobFinished) else 0.0
    ctl.state.step_state(e.requests, "built")
    for rid, nid in e.requests.items():
        ctl.tell(rid, m.StepFinished(request_id=rid, step=nid, worker=e.worker,
                                     seconds=seconds))
    for rid, (built, needed) in e.progress.items():
        ctl.state.progress(rid, built)
        ctl.tell(rid, m.BuildProgress(request_id=rid, built=built, total=needed))


def step_requeued(ctl: Controller, e: StepRequeued) -> None:
    ctl.log(f"step {e.key[:12]} re-queued: {e.reason}")
    if e.job:
        ctl.state.attempt_ended(e.job, e.outcome, e.reason)
        ctl.logs.close(e.job)
    ctl.state.step_state(e.requests, "ready")
    for rid, nid in e.requests.items():
        ctl.tell(rid, m.StepRetrying(request_id=rid, step=nid, worker=e.worker,
                                     reason=e.reason))


def step_failed(ctl: Controller, e: StepFailed) -> None:
    result = ctl.job_results.pop(e.key, None)
    lines = result.last_lines if isinstance(result, m.JobFailed) else []
    ctl.state.step_state(e.requests, "failed")
    for rid, nid in e.requests.items():
        ctl.tell(rid, m.StepFailed(request_id=rid, step=nid, worker=e.worker,
                                   reason=e.reason, last_lines=lines))


def job_cancelled(ctl: Controller, e: JobCancelled) -> None:
    link = ctl.workers.get(e.worker)
    if link is not None:
        link.send(m.JobCancel(job=e.job))
    ctl.logs.close(e.job)
    ctl.job_results.pop(e.key, None)  # its result may have come in before the cancel
    ctl.state.attempt_ended(e.job, "cancelled")


def request_finished(ctl: Controller, e: RequestFinished) -> None:
    ctl.schedules.finished(e.request_id)
    plan = ctl.plans[e.request_id]
    base = ctl.settings.artifact_cache_url.rstrip("/")
    urls = [f"{base}/1.0/artifacts?filename={name}"
            for t in plan.targets for name in plan.graph.nodes[t].artifact_filenames()]
    ctl.end(e.request_id, "finished",
            m.BuildFinished(request_id=e.request_id, artifacts=urls), artifacts=urls)
    ctl.verifier.sample(e.request_id)


def request_failed(ctl: Controller, e: RequestFailed) -> None:
    plan = ctl.plans.get(e.request_id)
    nid = next((n.id for n in plan.graph.nodes.values() if n.cache_key == e.key), None) \
        if plan else None
    reason = f"{nid} failed: {e.reason}" if nid else e.reason
    ctl.end(e.request_id, "failed", m.BuildFailed(request_id=e.request_id, reason=reason),
            reason)


def request_cancelled(ctl: Controller, e: RequestCancelled) -> None:
    ctl.end(e.request_id, "cancelled", m.BuildCancelled(request_id=e.request_id))


def dispatch_pending(ctl: Controller, e: DispatchPending) -> None:
    ctl.dispatch_soon()


HANDLERS = {
    RequestPlanned: request_planned,
    StepQueued: step_queued,
    JobStarted: job_started,
    StepJoined: step_joined,
    StepBuilt: step_built,
    StepRequeued: step_requeued,
    StepFailed: step_failed,
    JobCancelled: job_cancelled,
    RequestFinished: request_finished,
    RequestFailed: request_failed,
    RequestCancelled: request_cancelled,
    DispatchPending: dispatch_pending,
}

"""A controller started again picks up where the last one stopped.

From the state database: every request still active is resumed (with its
saved plan, or planned again if it was still graphing), and every attempt
that was running is put back as running on its worker, which keeps running
it while the controller is away. A worker that reconnects holding the job
gets it adopted (see controller.jobs); one that is not back within
`restart_grace` seconds has its steps run elsewhere. Attempts of requests
that ended are marked lost: after a restart nothing shows running that is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distbuild.controller.requests import Plan, plan, plan_failed, planned, schedule
from distbuild.protocol import messages as m

if TYPE_CHECKING:
    from distbuild.controller.core import Controller


def resume(ctl: Controller) -> None:
    """Resume the requests and attempts of the previous controller (before any link opens)."""
    requests = ctl.state.active_requests()
    for record in requests:
        rid = record["id"]
        ctl.watchers[rid] = set()
        if record["plan"] and record["state"] == "graphing":
            # Stopped between keeping the plan and recording its nodes: do both again.
            planned(ctl, rid, Plan.from_json(record["plan"]))
            ctl.log(f"request {rid}: resumed ({record['system']})")
        elif record["plan"]:
            saved = Plan.from_json(record["plan"])
            schedule(ctl, rid, saved, saved.cached | ctl.state.built_keys(rid))
            ctl.log(f"request {rid}: resumed ({record['system']})")
        else:
            ctl.log(f"request {rid}: resumed; computing its graph again")
            request = m.BuildRequest(definitions_repo=record["definitions_repo"],
                                     definitions_commit=record["definitions_commit"],
                                     system=record["system"], components=record["components"])
            ctl.in_thread(plan, ctl, rid, request).addCallbacks(
                lambda result, rid=rid: planned(ctl, rid, result),
                lambda failure, rid=rid: plan_failed(ctl, rid, failure))
    waiting: set[str] = set()
    for attempt in ctl.state.running_attempts():
        job, key, worker = attempt["job"], attempt["cache_key"], attempt["worker"]
        if ctl.scheduler.restore_job(job, key, worker, attempt["attempt"]):
            ctl.state.node_state(key, "running")
            waiting.add(worker)
            ctl.log(f"job {job}: waiting for {worker} to report it")
        else:
            ctl.state.attempt_ended(job, "lost", "the controller restarted and no request "
                                    "needs the step any more")
    if requests or waiting:
        ctl.log(f"resumed {len(requests)} request(s); {len(waiting)} worker(s) have "
                f"{ctl.settings.restart_grace:g} s to report their steps")
    for worker in waiting:
        ctl.reactor.callLater(ctl.settings.restart_grace, ctl.worker_gone, worker)

"""Reproducibility checks: a built step built again on another worker, sha256s compared.

A check waits in a queue until a worker other than the step's builder has a
free slot (after the scheduler's own dispatch: checks never delay builds),
then runs there as a verify job, which uploads nothing. The controller
compares the rebuilt artifacts' sha256s with those the artifact cache holds
(its record, not the verifying worker's word) and keeps the outcome, with
the members that differ as the worker listed them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distbuild import tokens
from distbuild.controller.requests import Plan, components
from distbuild.controller.settings import TOKEN_TTL
from distbuild.controller.verifications import Verifications
from distbuild.errors import DistbuildError
from distbuild.protocol import messages as m
from distbuild.scheduling import required_labels

if TYPE_CHECKING:
    from distbuild.controller.core import Controller

PLACE_EVERY = 1.0  # seconds between looks for free slots


@dataclass
class Check:
    id: int
    request_id: str
    step: str
    key: str
    built_by: str
    job: str = ""
    worker: str = ""
    watchers: set[Any] = field(default_factory=set)


class Verifier:
    """The queue of checks, the verify jobs that run, and their outcomes."""

    def __init__(self, ctl: Controller):
        self.ctl = ctl
        self.records = Verifications(ctl.state.db)
        self.queue: list[Check] = [Check(r["id"], r["request_id"], r["step"], r["cache_key"],
                                         r["built_by"]) for r in self.records.unfinished()]
        for check in self.queue:
            self.records.requeued(check.id)  # the job it ran is not ours any more
        self.running: dict[str, Check] = {}  # job -> check
        self._plans: dict[str, Plan] = {}

    def start(self) -> None:
        """Look for free slots every PLACE_EVERY seconds, on the reactor."""
        from twisted.internet import task

        loop = task.LoopingCall(self.place)
        loop.clock = self.ctl.reactor
        loop.start(PLACE_EVERY, now=False)

    # -- asking ----------------------------------------------------------------------------

    def ask(self, request_id: str, steps: list[str], watcher=None) -> list[dict[str, Any]]:
        """Queue checks of `steps` (node ids or names; none: every built step) of a request."""
        found = self.records.plan(request_id)
        if found is None:
            raise DistbuildError(f"no request {request_id}", "verify-request")
        state, plan_json = found
        if not plan_json:
            raise DistbuildError(f"request {request_id} has no build graph to verify "
                                 f"(it is {state})", "verify-request")
        plan = self._plan(request_id, plan_json)
        builders = self.records.builders(request_id)
        if steps:
            try:
                wanted = [s if s in plan.graph.nodes else components(plan.graph, [s])[0]
                          for s in steps]
            except DistbuildError as e:
                raise DistbuildError(e.what, "verify-request") from None
            unbuilt = [s for s in wanted if s not in builders]
            if unbuilt:
                raise DistbuildError(f"{', '.join(unbuilt)} of request {request_id} has no "
                                     "built attempt to check against", "verify-request")
        else:
            wanted = [n for n in plan.graph.order if n in builders]
            if not wanted:
                raise DistbuildError(f"request {request_id} built no steps to verify",
                                     "verify-request")
        return [self._queue(request_id, nid, *builders[nid], watcher) for nid in wanted]

    def sample(self, request_id: str) -> None:
        """A request finished: queue checks of about `verify_fraction` of the steps it built."""
        fraction = self.ctl.settings.verify_fraction
        if fraction <= 0:
            return
        for nid, (key, worker) in self.records.built_here(request_id).items():
            if random.random() < fraction:
                self._queue(request_id, nid, key, worker, None)

    def _queue(self, rid: str, nid: str, key: str, built_by: str, watcher) -> dict[str, Any]:
        row = self.records.add(rid, nid, key, built_by)
        check = Check(row["id"], rid, nid, key, built_by)
        if watcher is not None:
            check.watchers.add(watcher)
        self.queue.append(check)
        self.ctl.log(f"verification {check.id}: {nid} of request {rid} (built by "
                     f"{built_by or 'an unknown worker'}) queued")
        return {"id": check.id, "step": nid, "cache_key": key, "built_by": built_by}

    def _plan(self, rid: str, plan_json: str | None = None) -> Plan:
        plan = self._plans.get(rid) or self.ctl.plans.get(rid)
        if plan is None:
            found = plan_json or (self.records.plan(rid) or ("", None))[1]
            plan = Plan.from_json(found or "")
            if len(self._plans) > 16:
                self._plans.pop(next(iter(self._plans)))
            self._plans[rid] = plan
        return plan

    # -- running ---------------------------------------------------------------------------

    def place(self) -> None:
        """Start each queued check on a free slot of a worker that did not build its step."""
        sched = self.ctl.scheduler
        patterns = [(p, frozenset(ls)) for p, ls in self.ctl.settings.step_labels.items()]
        for check in list(self.queue):
            node = self._plan(check.request_id).graph.nodes[check.step]
            labels = required_labels(check.step, patterns)
            free = sorted((w for w in sched.workers.values()
                           if w.name != check.built_by and w.arch == node.arch and w.free > 0
                           and not w.away and not w.draining and labels <= w.labels
                           and w.name in self.ctl.workers), key=lambda w: (-w.free, w.name))
            if not free:
                continue
            worker = free[0].name
            tries = self.records.started(check.id, worker)
            check.job, check.worker = f"verify-{check.id}-{tries}", worker
            sched.reserve(worker, check.job)
            self.queue.remove(check)
            self.running[check.job] = check
            # The stored artifacts and those it stages from must outlive the check:
            # the cache's garbage collection spares pinned keys.
            keys = [check.key] + [self._plan(check.request_id).graph.nodes[d].cache_key
                                  for d in self._plan(check.request_id).graph.closure(check.step)]
            self._pins(self.ctl.cache.pin, check, keys, ttl=TOKEN_TTL).addBoth(
                lambda _, check=check, job=check.job: self._send(check, job))

    def _pins(self, call, check: Check, *args, **kwargs):
        name = f"verify-{check.id}"
        d = self.ctl.in_thread(lambda: call(name, *args, tokens.issue(
            self.ctl.secret, f"pin:{name}"), **kwargs))
        return d.addErrback(lambda f: self.ctl.log(f"verification {check.id}: pin {name}: "
                                                   f"{f.getErrorMessage()}"))

    def _send(self, check: Check, job: str) -> None:
        if self.running.get(job) is not check:
            return  # given up on while its pin was made
        link = self.ctl.workers.get(check.worker)
        if link is None:
            self.requeue(job, f"worker {check.worker} went away")
            return
        plan = self._plan(check.request_id)
        settings = self.ctl.settings
        link.send(m.JobRun(
            job=check.job, step=plan.node_dict(check.step),
            closure=plan.closure(check.step),
            trove_git_url=settings.trove_git_url, artifact_cache_url=settings.artifact_cache_url,
            token="", verify=True))
        self.ctl.log(f"verification {check.id}: {check.step} started on {check.worker} "
                     f"(job {check.job})")

    def owns(self, job: str) -> bool:
        """Whether `job` is a verify job this controller runs."""
        return job in self.running

    def requeue(self, job: str, why: str) -> None:
        """A verify job will not report (its worker left, or gave it back): queue it again."""
        check = self._release(job)
        if check is not None:
            self.ctl.log(f"verification {check.id}: {why}; queued again")
            self.records.requeued(check.id)
            self.queue.append(check)

    def worker_lost(self, name: str) -> None:
        """Worker `name` is gone or came back anew: its verify jobs run again elsewhere."""
        for job, check in list(self.running.items()):
            if check.worker == name:
                self.requeue(job, f"worker {name} was lost")

    def _release(self, job: str) -> Check | None:
        check = self.running.pop(job, None)
        if check is not None:
            self.ctl.apply(self.ctl.scheduler.unreserve(check.worker, job))
        return check

    # -- outcomes --------------------------------------------------------------------------

    def verified(self, msg: m.JobVerified) -> None:
        """Compare the rebuilt artifacts with the cache's record (in a thread), then record."""
        check = self._release(msg.job)
        if check is None:
            return
        d = self.ctl.in_thread(self.ctl.cache.source_meta, check.key)
        d.addCallbacks(lambda meta: self._compared(check, msg, meta),
                       lambda f: self._end(check, "failed", "could not read the stored "
                                                            f"artifacts: {f.getErrorMessage()}"))

    def _compared(self, check: Check, msg: m.JobVerified, meta: dict | None) -> None:
        stored = {a["filename"]: a for a in (meta or {}).get("artifacts", [])
                  if a["filename"] in msg.artifacts or a["filename"].startswith(
                      f"{check.key}.{self._kind(check)}.")}
        differ: dict[str, Any] = {}
        for name in sorted(set(stored) | set(msg.artifacts)):
            ours, theirs = msg.artifacts.get(name), stored.get(name)
            if ours is None or theirs is None or ours.get("sha256") != theirs.get("sha256"):
                differ[name] = {
                    "stored": {"sha256": theirs["sha256"], "size": theirs["size"]}
                    if theirs else None,
                    "rebuilt": ours, "files": msg.differences.get(name, [])}
        if differ:
            files = [f["path"] for d in differ.values() for f in d["files"]]
            self._end(check, "mismatch", f"{len(differ)} artifact(s) differ"
                      + (f": {', '.join(files[:5])}" + (" ..." if len(files) > 5 else "")
                         if files else ""), differ)
        else:
            self._end(check, "match")

    @staticmethod
    def _kind(check: Check) -> str:
        return check.step.split(":", 1)[0]

    def failed(self, msg: m.JobFailed) -> None:
        """The step could not be built again: that is the check's outcome."""
        check = self._release(msg.job)
        if check is not None:
            self._end(check, "failed", f"could not build it again: {msg.reason}")

    def _end(self, check: Check, state: str, reason: str = "",
             differences: dict[str, Any] | None = None) -> None:
        row = self.records.ended(check.id, state, reason, differences)
        self._pins(self.ctl.cache.unpin, check)
        self.ctl.log(f"verification {check.id}: {check.step} of request {check.request_id}: "
                     f"{state} (built by {check.built_by or '?'}, rebuilt by {check.worker})"
                     + (f": {reason}" if reason else ""))
        for link in check.watchers:
            link.send(m.VerifyResult(request_id=check.request_id, verification=row))
        for observer in self.ctl.observers:
            observer.verification_ended(row)


def on_verify_request(ctl: Controller, link, msg: m.VerifyRequest) -> None:
    try:
        queued = ctl.verifier.ask(msg.request_id, msg.steps, None if msg.detach else link)
    except DistbuildError as e:
        link.send(m.Error(message=str(e), request_id=msg.request_id))
        return
    link.send(m.VerifyAccepted(request_id=msg.request_id, verifications=queued))
    ctl.verifier.place()


def on_job_verified(ctl: Controller, link, msg: m.JobVerified) -> None:
    check = ctl.verifier.running.get(msg.job)
    if check is not None and check.worker == link.hello.name:
        ctl.verifier.verified(msg)


HANDLERS = {m.VerifyRequest: on_verify_request, m.JobVerified: on_job_verified}

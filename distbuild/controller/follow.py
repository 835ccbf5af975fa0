"""Following a request again (`distbuild attach`, or an initiator back after a restart)
and fetching any step's log (`distbuild log`).

An attaching initiator says how many lines of each job's log it has shown;
it gets the rest of each running step's log, then everything live, with
nothing twice. Logs come from the controller's own copy (state_dir/logs),
which keeps failed, cancelled and lost attempts' logs too; a step built
before this controller saw it has its log in the artifact cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distbuild.controller.events import replay
from distbuild.controller.joblogs import CHUNK_CHARS
from distbuild.protocol import messages as m

if TYPE_CHECKING:
    from distbuild.controller.core import Controller


def on_attach_request(ctl: Controller, link, msg: m.AttachRequest) -> None:
    rid = msg.request_id
    record = ctl.state.request(rid)
    if record is None:
        link.send(m.Error(message=f"no request {rid}", request_id=rid))
        return
    link.send(m.RequestAccepted(request_id=rid))
    if rid not in ctl.watchers:
        link.send(ended_message(record))
        return
    ctl.watchers[rid].add(link)
    ctl.log(f"request {rid}: {link.peer} attached")
    request = ctl.scheduler.requests.get(rid)
    if request is None:
        return  # still computing its graph: the rest follows as for its submitter
    link.send(m.BuildProgress(request_id=rid, built=len(request.built),
                              total=len(request.needed)))
    for key in sorted(request.needed - request.built):
        work = ctl.scheduler.work[key]
        if work.job is not None:
            nid = work.requests[rid]
            replay(ctl, link, rid, nid, work.job, work.worker or "", work.attempts,
                   msg.seen.get(work.job, 0))


def ended_message(record: dict) -> m.Message:
    """What an initiator that attaches to an ended request is told."""
    rid = record["id"]
    if record["state"] == "finished":
        return m.BuildFinished(request_id=rid, artifacts=record["artifacts"])
    if record["state"] == "cancelled":
        return m.BuildCancelled(request_id=rid)
    return m.BuildFailed(request_id=rid, reason=record["reason"] or record["state"])


def on_log_request(ctl: Controller, link, msg: m.LogRequest) -> None:
    rid, step = msg.request_id, msg.step
    nid, key = find_step(ctl, rid, step)
    if key is None:
        link.send(m.Error(message=nid, request_id=rid))
        return
    attempts = [a for a in ctl.state.attempts_of(key) if ctl.logs.path(a["job"]).exists()]
    if attempts:
        latest = attempts[-1]
        for _, lines in ctl.logs.read(latest["job"]):
            link.send(m.LogLines(request_id=rid, step=nid, lines=lines))
        link.send(m.LogLines(request_id=rid, step=nid, lines=[], done=True,
                             attempt=latest["job"], outcome=latest["outcome"]))
        return

    def cached(content: bytes | None) -> None:
        if content is None:
            link.send(m.Error(message=f"step {nid} of request {rid} has no log yet",
                              request_id=rid))
            return
        text = content.decode("utf-8", "replace").splitlines()
        for start in range(0, len(text), 1000):
            chunk = text[start:start + 1000]
            while sum(map(len, chunk)) > CHUNK_CHARS and len(chunk) > 1:
                chunk = chunk[:len(chunk) // 2]
            link.send(m.LogLines(request_id=rid, step=nid, lines=chunk))
        link.send(m.LogLines(request_id=rid, step=nid, lines=[], done=True,
                             outcome="cached"))

    ctl.in_thread(ctl.cache.fetch_log, key).addCallbacks(cached, lambda f: link.send(
        m.Error(message=f"cannot fetch the log from the artifact cache: "
                        f"{f.getErrorMessage()}", request_id=rid)))


def find_step(ctl: Controller, rid: str, step: str) -> tuple[str, str | None]:
    """(node id, cache key) of the step `step` names; (why not, None) if none or several."""
    if ctl.state.request(rid) is None:
        return f"no request {rid}", None
    key = ctl.state.node_key(rid, step)
    if key is not None:
        return step, key
    matches = [n for n in ctl.state.node_ids(rid) if n.rsplit("/", 1)[-1].split(":")[-1] == step]
    if len(matches) == 1:
        return matches[0], ctl.state.node_key(rid, matches[0])
    if matches:
        return f"'{step}' names several steps: {', '.join(sorted(matches))}", None
    return f"request {rid} has no step '{step}'", None


HANDLERS = {
    m.AttachRequest: on_attach_request,
    m.LogRequest: on_log_request,
}

"""What the farm looks like now: workers, queue, requests and their steps, as plain rows.

The command line (`distbuild workers`, `queue`, `list`, `status`) and the
dashboard's JSON both come from here, so they always agree. Rows are read
from the scheduler (what runs and waits now) and the state database (what
ran, with times); nothing here changes either.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from distbuild.dispatchorder import dispatch_order
from distbuild.protocol import messages as m
from distbuild.scheduling import State
from distbuild.scheduling_labels import missing_labels

if TYPE_CHECKING:
    from distbuild.controller.core import Controller


def _started_at(ctl: Controller) -> dict[str, float]:
    """job -> when its attempt started, for every attempt still running."""
    return {a["job"]: a["started"] for a in ctl.state.running_attempts()}


def _node_of(ctl: Controller, key: str) -> tuple[str, str]:
    """(request id, node id) of the oldest request waiting for `key`; ("", key) if none."""
    work = ctl.scheduler.work.get(key)
    if work is None or not work.requests:
        return "", key[:16]
    rid = min(work.requests, key=lambda r: ctl.scheduler.requests[r].seq
              if r in ctl.scheduler.requests else 0)
    return rid, work.requests[rid]


def worker_rows(ctl: Controller) -> list[dict[str, Any]]:
    """Every worker the scheduler knows (connected or away), sorted by name."""
    now = time.time()
    started = _started_at(ctl)
    rows = []
    for name in sorted(set(ctl.scheduler.workers) | set(ctl.workers)):
        worker = ctl.scheduler.workers.get(name)
        link = ctl.workers.get(name)
        steps = []
        for job in sorted(worker.jobs if worker else ()):
            key = ctl.scheduler.jobs.get(job)
            if key is None:
                continue
            rid, nid = _node_of(ctl, key)
            since = started.get(job)
            steps.append({"job": job, "request": rid, "step": nid, "started": since,
                          "seconds": round(now - since, 1) if since else None})
        state = ("away" if worker is None or worker.away or link is None
                 else "draining" if worker.draining else "connected")
        rows.append({
            "name": name, "arch": worker.arch if worker else "", "state": state,
            "labels": list(link.labels) if link else [],
            "slots": worker.slots if worker else 0, "busy": len(worker.jobs) if worker else 0,
            "steps": steps,
            "connected_since": link.connected_at if link else None,
            "last_heartbeat": link.last_heard if link else None,
            "software": (link.hello.software if link and link.hello else ""),
        })
    return rows


def queue_rows(ctl: Controller) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(ready steps in the order the scheduler will run them, steps waiting on others)."""
    sched = ctl.scheduler
    usable: dict[str, int] = {}
    for w in sched.workers.values():
        if not w.away and not w.draining:
            usable[w.arch] = usable.get(w.arch, 0) + w.slots
    ready = []
    for position, work in enumerate(dispatch_order(sched), 1):
        rid, nid = _node_of(ctl, work.key)
        missing = missing_labels(sched, work.pool) if work.labels else None
        if missing:
            reason = f"no connected {work.arch} worker with label(s) {', '.join(missing)}"
        elif work.arch in usable:
            reason = f"all {usable[work.arch]} {work.arch} slots busy"
        else:
            reason = f"no connected worker of arch {work.arch}"
        ready.append({"position": position, "request": rid, "step": nid, "key": work.key,
                      "arch": work.arch, "labels": sorted(work.labels), "reason": reason,
                      "requests": len(work.requests),
                      "attempts": work.attempts})
    waiting = []
    for work in sched.work.values():
        if work.state != State.WAITING or not work.requests:
            continue
        rid, nid = _node_of(ctl, work.key)
        blockers = sorted(_node_of(ctl, d)[1] for d in work.deps
                          if d in sched.work and sched.work[d].state != State.BUILT)
        if not blockers:
            continue
        more = f" and {len(blockers) - 1} more" if len(blockers) > 1 else ""
        waiting.append({"request": rid, "step": nid, "key": work.key,
                        "waiting_for": blockers, "reason": f"waiting for {blockers[0]}{more}"})
    waiting.sort(key=lambda r: (r["request"], r["step"]))
    return ready, waiting


def request_row(record: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """A request as the list shows it: its record, how long it took (or has run), progress."""
    now = time.time() if now is None else now
    end = record["ended"] or now
    return {**record, "duration": round(end - record["created"], 1),
            "progress": f"{record['built']}/{record['unbuilt']}"}


def request_rows(ctl: Controller, limit: int = 50, state: str = "") -> list[dict[str, Any]]:
    """The newest requests first, with durations."""
    now = time.time()
    return [request_row(r, now) for r in ctl.state.requests(limit, state)]


def step_rows(ctl: Controller, status: dict[str, Any]) -> list[dict[str, Any]]:
    """Every step of a request (from its status), with its state, worker, start and duration.

    A step built before the request needed it (no attempt of this request built it)
    is `cached`.
    """
    now = time.time()
    latest: dict[str, dict[str, Any]] = {}
    for attempt in status.get("attempts", []):
        latest[attempt["step"]] = attempt
    rows = []
    for nid, key, state in ctl.state.nodes(status["id"]):
        attempt = latest.get(nid)
        if state == "built" and (attempt is None or attempt["outcome"] != "built"):
            state = "cached"
        row = {"step": nid, "key": key, "kind": nid.split(":", 1)[0], "state": state,
               "worker": "", "job": "", "started": None, "duration": None, "attempts": 0}
        if attempt is not None and state != "cached":
            ended = attempt["ended"] or (now if attempt["outcome"] == "running" else None)
            row.update(worker=attempt["worker"], job=attempt["job"],
                       started=attempt["started"], attempts=attempt["attempt"],
                       outcome=attempt["outcome"], reason=attempt["reason"],
                       duration=round(ended - attempt["started"], 1) if ended else None)
        rows.append(row)
    return rows


def status_with_steps(ctl: Controller, request_id: str) -> dict[str, Any] | None:
    """A request's status record with its duration and a row per step; None if unknown."""
    status = ctl.state.request(request_id)
    if status is None:
        return None
    return request_row(status) | {"steps": step_rows(ctl, status)}


def snapshot(ctl: Controller, recent: int = 20,
             queue: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None
             ) -> dict[str, Any]:
    """The farm page's data: workers, queue, running steps and the newest requests.

    `queue` may pass queue_rows() computed earlier, when nothing was scheduled since."""
    ready, waiting = queue or queue_rows(ctl)
    workers = worker_rows(ctl)
    running = [step | {"worker": w["name"]} for w in workers for step in w["steps"]]
    return {"workers": workers, "queue": ready, "waiting": len(waiting),
            "running": running, "requests": request_rows(ctl, recent), "time": time.time()}


def on_workers_request(ctl: Controller, link, msg: m.WorkersRequest) -> None:
    link.send(m.WorkerList(workers=worker_rows(ctl)))


def on_queue_request(ctl: Controller, link, msg: m.QueueRequest) -> None:
    ready, waiting = queue_rows(ctl)
    link.send(m.QueueReply(ready=ready, waiting=waiting))


HANDLERS = {
    m.WorkersRequest: on_workers_request,
    m.QueueRequest: on_queue_request,
}

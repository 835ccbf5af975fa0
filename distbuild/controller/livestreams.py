"""Server-sent event streams for the dashboard: the farm, one request, one step's log.

Nothing is pushed per scheduler event: the observer only notes that
something changed, and a tick (every TICK seconds) sends each open stream
what is new. A farm or request stream gets the whole picture again whenever
it differs from the last one sent (a request of 255 steps is a few KB), so a
page left open through a build always ends on the final state, even if it
missed a tick. A log stream sends the lines its file gained since the last
tick, then `done` with the attempt's outcome; if the step runs again, the
next attempt's log follows.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from twisted.internet import task
from twisted.web.server import NOT_DONE_YET

from distbuild.controller import farm
from distbuild.controller.follow import find_step
from distbuild.controller.observers import Observer
from distbuild.protocol import messages as m
from distbuild.scheduling import State

if TYPE_CHECKING:
    from distbuild.controller.core import Controller

TICK = 0.25
# Every stream gets at least a comment this often, so that a closed browser is noticed.
KEEPALIVE = 15.0
# Lines of a failed step's log shown on its request's page.
TAIL_LINES = 40


def open_stream(request) -> None:
    """Make a twisted.web request an event stream."""
    request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"x-accel-buffering", b"no")
    request.write(b"retry: 2000\n\n")


def send(request, event: str, data: Any) -> None:
    """One event on a stream: `data` as one line of JSON."""
    request.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())


def failure_tail(ctl: Controller, status: dict[str, Any]) -> dict[str, Any] | None:
    """The failed step of a failed request, with the last lines of its log."""
    failed = next((s for s in status["steps"] if s["state"] == "failed"), None)
    if failed is None or not failed.get("job"):
        return None
    lines: list[str] = []
    for _, chunk in ctl.logs.read(failed["job"]):
        lines = (lines + chunk)[-TAIL_LINES:]
    return {"step": failed["step"], "reason": failed.get("reason", ""), "lines": lines}


def request_view(ctl: Controller, rid: str) -> dict[str, Any] | None:
    """What a request's page shows: status, a row per step, its failure, its checks."""
    status = farm.status_with_steps(ctl, rid)
    if status is None:
        return None
    status.pop("attempts", None)
    status["failure"] = failure_tail(ctl, status) if status["state"] == "failed" else None
    status["verifications"] = ctl.verifier.records.of_request(rid)
    return status


class _LogStream:
    """One browser following one step's log."""

    def __init__(self, request, rid: str, step: str, key: str):
        self.request, self.rid, self.step, self.key = request, rid, step, key
        self.job: str | None = None
        self.sent = 0  # lines of `job` sent
        self.offset = 0  # bytes of its log file read
        self.finished = False  # `done` sent for the current attempt


class LiveStreams(Observer):
    """The open event streams, and the tick that feeds them."""

    def __init__(self, ctl: Controller, clock):
        self.ctl = ctl
        self.farms: dict[Any, str] = {}  # request -> last JSON sent
        self.requests: dict[Any, tuple[str, str]] = {}  # request -> (request id, last JSON)
        self.logs: list[_LogStream] = []
        self.dirty = True
        self._since_keepalive = 0.0
        self._ticks = 0
        self._queue: tuple[list, list] | None = None
        self._queue_stale = False
        self._queue_next = 0.0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = clock
        self._loop.start(TICK, now=False)

    def stop(self) -> None:
        """Stop the tick (streams stay open until their browsers go)."""
        if self._loop.running:
            self._loop.stop()

    # -- Observer: anything may have changed -----------------------------------------------

    def event(self, event: Any) -> None:
        self.dirty = True

    def message(self, link: Any, message: Any) -> None:
        # Log lines change no view; log streams poll their files on every tick anyway.
        if not isinstance(message, m.JobOutput):
            self.dirty = True

    def link_closed(self, link: Any) -> None:
        self.dirty = True

    def request_ended(self, request_id: str, state: str) -> None:
        self.dirty = True

    # -- opening streams -------------------------------------------------------------------

    def _follow(self, request, table, value) -> object:
        open_stream(request)
        table[request] = value
        request.notifyFinish().addBoth(lambda _: table.pop(request, None))
        self.dirty = True
        return NOT_DONE_YET

    def farm(self, request) -> object:
        """Follow the farm page's data (`farm` events)."""
        return self._follow(request, self.farms, "")

    def request(self, request, rid: str) -> object:
        """Follow one build request's page data (`request` events)."""
        return self._follow(request, self.requests, (rid, ""))

    def log(self, request, rid: str, step: str) -> object:
        """Follow one step's log: `attempt`, `lines` and `done` events (or `missing`)."""
        nid, key = find_step(self.ctl, rid, step)
        open_stream(request)
        if key is None:
            send(request, "missing", {"message": nid})
            request.finish()
            return NOT_DONE_YET
        stream = _LogStream(request, rid, nid, key)
        self.logs.append(stream)
        request.notifyFinish().addBoth(lambda _: self._drop(stream))
        self._feed_log(stream)
        return NOT_DONE_YET

    def _drop(self, stream: _LogStream) -> None:
        if stream in self.logs:
            self.logs.remove(stream)

    # -- the tick --------------------------------------------------------------------------

    def _tick(self) -> None:
        self._since_keepalive += TICK
        self._ticks += 1
        keepalive = self._since_keepalive >= KEEPALIVE
        if keepalive:
            self._since_keepalive = 0.0
        # Durations and heartbeats move on even when nothing happens: redraw each second.
        if self.dirty or self._ticks % round(1 / TICK) == 0:
            changed, self.dirty = self.dirty, False
            self._push_views(changed)
        for stream in list(self.logs):
            self._feed_log(stream)
        if keepalive:
            for request in [*self.farms, *self.requests, *(s.request for s in self.logs)]:
                request.write(b": keepalive\n\n")

    def _push_views(self, changed: bool) -> None:
        self._queue_stale |= changed
        if self.farms:
            # The queue (a copy of the scheduler asked) only moves when something happens,
            # and is asked again at most once per ten times what it cost last: with 10k
            # steps held that is a quarter of a second (benchmarks/dispatch_order_bench.py).
            now = time.monotonic()
            if self._queue is None or (self._queue_stale and now >= self._queue_next):
                self._queue, self._queue_stale = farm.queue_rows(self.ctl), False
                self._queue_next = now + 10 * (time.monotonic() - now)
            text = json.dumps(farm.snapshot(self.ctl, queue=self._queue))
            for request, last in list(self.farms.items()):
                if text != last:
                    request.write(f"event: farm\ndata: {text}\n\n".encode())
                    self.farms[request] = text
        views: dict[str, str] = {}
        for request, (rid, last) in list(self.requests.items()):
            if rid not in views:
                views[rid] = json.dumps(request_view(self.ctl, rid))
            if views[rid] != last:
                request.write(f"event: request\ndata: {views[rid]}\n\n".encode())
                self.requests[request] = (rid, views[rid])

    def _feed_log(self, stream: _LogStream) -> None:
        work = self.ctl.scheduler.work.get(stream.key)
        live = work.job if work is not None and work.state == State.RUNNING else None
        if live is not None and live != stream.job:
            # A (new) attempt runs: follow its log from the start.
            stream.job, stream.sent, stream.offset, stream.finished = live, 0, 0, False
            send(stream.request, "attempt", {"job": live, "worker": work.worker or "",
                                             "attempt": work.attempts, "state": "running"})
        if stream.job is None and not stream.finished:
            self._stored_log(stream)
            return
        if stream.job is not None:
            self._send_lines(stream, stream.job)
        if live is None and stream.job is not None and not stream.finished:
            outcome = next((a["outcome"] for a in self.ctl.state.attempts_of(stream.key)
                            if a["job"] == stream.job), "")
            if outcome != "running":
                stream.finished = True
                send(stream.request, "done", {"job": stream.job, "outcome": outcome})

    def _send_lines(self, stream: _LogStream, job: str) -> None:
        # Cheap when nothing is new (the count is kept in memory); else read on from
        # where the last read stopped, not from the top of what may be a huge log.
        while self.ctl.logs.count(job) > stream.sent:
            stream.offset, lines = self.ctl.logs.read_after(job, stream.offset)
            if not lines:
                return
            send(stream.request, "lines", {"first": stream.sent, "lines": lines})
            stream.sent += len(lines)

    def _stored_log(self, stream: _LogStream) -> None:
        """A step not running now: its latest attempt's log, else the cached one."""
        attempts = [a for a in self.ctl.state.attempts_of(stream.key)
                    if self.ctl.logs.path(a["job"]).exists()]
        stream.finished = True
        if attempts:
            latest = attempts[-1]
            send(stream.request, "attempt", {"job": latest["job"], "worker": latest["worker"],
                                             "attempt": len(attempts),
                                             "state": latest["outcome"]})
            stream.job = latest["job"]
            self._send_lines(stream, latest["job"])
            if latest["outcome"] != "running":
                stream.job = None
            stream.finished = latest["outcome"] != "running"
            if stream.finished:
                send(stream.request, "done", {"job": latest["job"],
                                              "outcome": latest["outcome"]})
            return

        def cached(content: bytes | None) -> None:
            if stream not in self.logs:
                return
            if content is None:
                send(stream.request, "done", {"job": "", "outcome": "no log yet"})
                return
            lines = content.decode("utf-8", "replace").splitlines()
            send(stream.request, "attempt", {"job": "", "worker": "", "attempt": 0,
                                             "state": "cached"})
            for start in range(0, len(lines), 1000):
                send(stream.request, "lines", {"first": start, "lines": lines[start:start + 1000]})
            send(stream.request, "done", {"job": "", "outcome": "cached"})

        def failed(f) -> None:
            if stream in self.logs:
                send(stream.request, "done", {"job": "", "outcome": "cannot fetch the log from "
                                              f"the artifact cache: {f.getErrorMessage()}"})

        self.ctl.in_thread(self.ctl.cache.fetch_log, stream.key).addCallbacks(cached, failed)

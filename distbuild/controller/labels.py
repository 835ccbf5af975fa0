"""Requests whose steps wait for worker labels no connected worker has: time them out.

A check every few seconds notes when each such request was first seen
waiting; one still waiting `label_wait_seconds` later fails, naming the step
and the labels. A worker with the labels joining in time clears the note.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distbuild.scheduling_labels import starved

if TYPE_CHECKING:
    from distbuild.controller.core import Controller


class LabelWaits:
    """The periodic check; `since` holds when each starved request was first seen."""

    def __init__(self, ctl: Controller):
        self.ctl = ctl
        self.since: dict[str, float] = {}
        self.interval = min(5.0, max(0.5, ctl.settings.label_wait_seconds / 4))

    def start(self) -> None:
        """Check now and then every `interval` seconds, on the reactor."""
        from twisted.internet import task

        loop = task.LoopingCall(self.check)
        loop.clock = self.ctl.reactor
        loop.start(self.interval, now=False)

    def check(self) -> None:
        """Fail the requests that have waited too long; forget those no longer waiting."""
        now = self.ctl.reactor.seconds()
        waiting = starved(self.ctl.scheduler)
        self.since = {rid: self.since.get(rid, now) for rid in waiting}
        for rid, why in waiting.items():
            waited = now - self.since[rid]
            if waited >= self.ctl.settings.label_wait_seconds:
                self.since.pop(rid)
                self.ctl.log(f"request {rid}: {why}; failing it after {waited:.0f} s")
                self.ctl.apply(self.ctl.scheduler.fail_request(
                    rid, f"{why} (waited {waited:.0f} s, label_wait_seconds is "
                         f"{self.ctl.settings.label_wait_seconds:g})"))

"""Keeping the cyclic garbage collector's full passes off a big request's plan while it builds.

A full pass looks at every tracked object in the process and holds the
reactor for it: with a 10,000-step plan in memory one pass took 180 to 290 ms,
and every worker that finished a step meanwhile waited that long for its
next job (it alone made the dispatch latency's p99). A big plan lives until
its request ends, so while one builds, the objects alive when it was
planned are frozen (`gc.freeze`): full passes then look only at what came
after. They are thawed when the last big request ends, and the next full
pass finds any garbage that was frozen with them. Small requests freeze
nothing: a pass over them is short, and a farm that always has one running
would otherwise never thaw.
"""

from __future__ import annotations

import gc

# Steps in a plan from which a full pass over it would stall the reactor for more
# than a few milliseconds (about 20 ms per thousand steps, measured).
FREEZE_FROM_STEPS = 1000


class PlanFreezer:
    """Freezes the heap when a big request starts building; thaws it when the last one ends."""

    def __init__(self, freeze_from: int = FREEZE_FROM_STEPS):
        self.freeze_from = freeze_from
        self.frozen: set[str] = set()  # ids of the big requests building

    def planned(self, request_id: str, steps: int) -> None:
        """Request `request_id`, of `steps` steps, was handed to the scheduler."""
        if steps >= self.freeze_from:
            self.frozen.add(request_id)
            gc.freeze()

    def ended(self, request_id: str) -> None:
        """Request `request_id` ended (any way): thaw if it was the last big one."""
        if request_id in self.frozen:
            self.frozen.discard(request_id)
            if not self.frozen:
                gc.unfreeze()

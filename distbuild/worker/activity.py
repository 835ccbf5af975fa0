"""Whether a step of this worker process is fetching or unpacking its inputs right now.

A prefetch (distbuild.worker.prefetch) waits for a pause in that, so it
never takes the cores, the disk or the trove from a step that waits for
its inputs; `LocalArtifactCache.prepare` counts the steps' calls.
Listeners hear when staging starts (True) and when it stops (False): a
step may wait for an artifact the low-priority prefetch is making.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_running = 0
_ended = 0.0
_changed = threading.Condition()
listeners: list[Callable[[bool], None]] = []


@contextmanager
def staging() -> Iterator[None]:
    """Count the block as a step's staging work."""
    global _running, _ended
    with _changed:
        _running += 1
        if _running == 1:
            for listener in listeners:
                listener(True)
    try:
        yield
    finally:
        with _changed:
            _running -= 1
            _ended = time.monotonic()
            if _running == 0:
                for listener in listeners:
                    listener(False)
            _changed.notify_all()


def wait_until_quiet(quiet: float = 0.05, stop: threading.Event | None = None) -> None:
    """Block until no step has staged anything for `quiet` seconds (or `stop` is set)."""
    with _changed:
        while stop is None or not stop.is_set():
            if _running == 0:
                left = _ended + quiet - time.monotonic()
                if left <= 0:
                    return
                _changed.wait(left)
            else:
                _changed.wait(0.5)

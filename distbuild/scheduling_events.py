"""The states work goes through, and what the scheduler's calls cause, as events.

Pure data: each event names the work (by cache key) and the requests
(request id -> node id) it concerns; the controller turns them into messages.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    WAITING = "waiting"  # some dependency is not built yet
    READY = "ready"  # can run; waits for a worker slot
    RUNNING = "running"
    BUILT = "built"
    FAILED = "failed"


# Looking a member up on an Enum class costs a descriptor call, and comparing with
# == a Python-level method: the scheduler's hot paths use these, with `is`.
WAITING, READY, RUNNING, BUILT, FAILED = (State.WAITING, State.READY, State.RUNNING,
                                          State.BUILT, State.FAILED)


@dataclass(frozen=True)
class RequestPlanned:
    request_id: str
    total: int
    unbuilt: int


@dataclass(frozen=True)
class StepQueued:
    key: str
    requests: dict[str, str]


@dataclass(frozen=True)
class JobStarted:
    job: str
    key: str
    worker: str
    attempt: int
    requests: dict[str, str]


@dataclass(frozen=True)
class StepJoined:
    """A request now also waits for work that was already running for another one."""

    key: str
    worker: str
    attempt: int
    requests: dict[str, str]


@dataclass(frozen=True)
class StepBuilt:
    key: str
    worker: str
    requests: dict[str, str]
    progress: dict[str, tuple[int, int]]  # request id -> (built, needed)


@dataclass(frozen=True)
class StepRequeued:
    key: str
    worker: str
    reason: str
    requests: dict[str, str]
    job: str = ""
    outcome: str = "lost"  # what became of the attempt: lost, or handed-back


@dataclass(frozen=True)
class StepFailed:
    key: str
    worker: str
    reason: str
    requests: dict[str, str]


@dataclass(frozen=True)
class JobCancelled:
    job: str
    key: str
    worker: str


@dataclass(frozen=True)
class RequestFinished:
    request_id: str


@dataclass(frozen=True)
class RequestFailed:
    request_id: str
    reason: str
    key: str | None = None


@dataclass(frozen=True)
class RequestCancelled:
    request_id: str


@dataclass(frozen=True)
class DispatchPending:
    """A call stopped at its share of job starts: free slots may still match ready work.

    The controller calls `Scheduler.dispatch` again on its next turn, after the
    messages of this call are out.
    """


Event = (RequestPlanned | StepQueued | JobStarted | StepJoined | StepBuilt | StepRequeued
         | StepFailed | JobCancelled | RequestFinished | RequestFailed | RequestCancelled
         | DispatchPending)

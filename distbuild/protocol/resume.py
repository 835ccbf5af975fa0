"""Messages that keep work going across a stop: drain, hand-back, adoption, reattaching.

A worker that stops gracefully says so (worker-draining) and hands back the
steps it will not finish (job-handed-back). A worker that reconnects lists
the jobs it holds in worker-ready; the controller keeps each (job-adopt) or
drops it (job-cancel). An initiator follows a request again with
attach-request and fetches any step's log with log-request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from distbuild.protocol.base import Message


@dataclass
class WorkerDraining(Message):
    """The worker takes no new steps; what runs may take `seconds` more, then is handed back."""

    type: ClassVar[str] = "worker-draining"
    link: ClassVar[str] = "worker"
    sender: ClassVar[str] = "client"
    seconds: float


@dataclass
class JobHandedBack(Message):
    """The worker stopped this job unfinished and will not report it: run it elsewhere."""

    type: ClassVar[str] = "job-handed-back"
    link: ClassVar[str] = "worker"
    sender: ClassVar[str] = "client"
    job: str
    reason: str


@dataclass
class JobAdopt(Message):
    """Keep running a held job; resend its log from line `lines` (from 0), then its result."""

    type: ClassVar[str] = "job-adopt"
    link: ClassVar[str] = "worker"
    sender: ClassVar[str] = "controller"
    job: str
    lines: int = 0


@dataclass
class AttachRequest(Message):
    """Follow a request; `seen` is how many lines of each job's log are already shown."""

    type: ClassVar[str] = "attach-request"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "client"
    request_id: str
    seen: dict[str, int] = field(default_factory=dict)


@dataclass
class LogRequest(Message):
    """Ask for the log of one step of a request (its latest attempt's, or the cached one)."""

    type: ClassVar[str] = "log-request"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "client"
    request_id: str
    step: str


@dataclass
class LogLines(Message):
    """Part of a step's log, in order; the last part has `done` set."""

    type: ClassVar[str] = "log-lines"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str
    step: str
    lines: list[str]
    done: bool = False
    attempt: str = ""
    outcome: str = ""

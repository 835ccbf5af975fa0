"""Every message of the distbuild protocol, one dataclass each, and MESSAGES (type -> class).

Messages travel as JSON lines over an SSH channel (subsystem `distbuild`).
Each class names its wire `type`, which link carries it and which way. The
handshake and initiator messages are here, the worker link's in `jobs`, and
those that keep work across stops in `resume`, reproducibility checks' in
`verify`, scheduled builds' in `schedules`; all are importable from here.
The table in docs/protocol.md is checked against MESSAGES by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from distbuild.protocol import farm, jobs, resume, schedules, verify
from distbuild.protocol.base import PROTOCOL_VERSION, Message
from distbuild.protocol.farm import QueueReply, QueueRequest, WorkerList, WorkersRequest
from distbuild.protocol.jobs import (
    ArtifactPrefetch,
    JobCancel,
    JobFailed,
    JobFinished,
    JobOutput,
    JobRun,
    WorkerReady,
)
from distbuild.protocol.resume import (
    AttachRequest,
    JobAdopt,
    JobHandedBack,
    LogLines,
    LogRequest,
    WorkerDraining,
)
from distbuild.protocol.schedules import (
    ScheduleAdd,
    ScheduleList,
    ScheduleRemove,
    ScheduleReply,
    ScheduleRun,
)
from distbuild.protocol.verify import JobVerified, VerifyAccepted, VerifyRequest, VerifyResult

__all__ = ["PROTOCOL_VERSION", "ArtifactPrefetch", "AttachRequest", "JobAdopt", "JobCancel",
           "JobFailed", "JobFinished", "JobHandedBack", "JobOutput", "JobRun", "JobVerified",
           "LogLines", "LogRequest", "Message", "QueueReply", "QueueRequest", "ScheduleAdd",
           "ScheduleList", "ScheduleRemove", "ScheduleReply", "ScheduleRun", "VerifyAccepted",
           "VerifyRequest", "VerifyResult", "WorkerDraining", "WorkerList", "WorkerReady",
           "WorkersRequest"]


# -- handshake (both links) --------------------------------------------------------------------


@dataclass
class Hello(Message):
    """First line a client sends: its protocol version, role and name."""

    type: ClassVar[str] = "hello"
    link: ClassVar[str] = "any"
    sender: ClassVar[str] = "client"
    protocol: int
    role: str  # "worker" or "initiator"
    name: str
    software: str = ""


@dataclass
class Welcome(Message):
    """The controller accepts the client; the link is open. It names its trove's URLs."""

    type: ClassVar[str] = "welcome"
    link: ClassVar[str] = "any"
    sender: ClassVar[str] = "controller"
    protocol: int
    controller: str
    # Where the network's trove is, so that an initiator needs no settings file:
    # "" for what the controller was not told.
    trove_git_url: str = ""
    trove_ssh_url: str = ""
    artifact_cache_url: str = ""
    definitions_repo: str = ""
    # The trove's SSH host key (a .pub line): the link is authenticated by the
    # controller's host key, so an initiator can trust this one for its push.
    trove_ssh_host_key: str = ""


# The members of Welcome that say where the trove is.
TROVE_FIELDS = ("trove_git_url", "trove_ssh_url", "artifact_cache_url", "definitions_repo",
                "trove_ssh_host_key")


@dataclass
class Refused(Message):
    """The controller refuses the client (wrong version, unknown name) and closes the link."""

    type: ClassVar[str] = "refused"
    link: ClassVar[str] = "any"
    sender: ClassVar[str] = "controller"
    reason: str
    protocol: int = PROTOCOL_VERSION


@dataclass
class Ping(Message):
    """Heartbeat; the peer answers with Pong carrying the same number."""

    type: ClassVar[str] = "ping"
    link: ClassVar[str] = "any"
    sender: ClassVar[str] = "either"
    seq: int


@dataclass
class Pong(Message):
    """Answer to Ping."""

    type: ClassVar[str] = "pong"
    link: ClassVar[str] = "any"
    sender: ClassVar[str] = "either"
    seq: int


# -- initiator link ----------------------------------------------------------------------------


@dataclass
class BuildRequest(Message):
    """Build SYSTEM (or only COMPONENTS of it) from a definitions commit on the trove."""

    type: ClassVar[str] = "build-request"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "client"
    definitions_repo: str
    definitions_commit: str
    system: str
    components: list[str] = field(default_factory=list)
    fetch_cached_logs: bool = False
    detach: bool = False
    strict: bool = False  # unknown fields in the definitions fail the request
    priority: str = "normal"  # "high", "normal" or "low": see docs/architecture.md


@dataclass
class RequestAccepted(Message):
    """The controller took the request and gave it an ID."""

    type: ClassVar[str] = "request-accepted"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str


@dataclass
class GraphingStarted(Message):
    """Computing the build graph."""

    type: ClassVar[str] = "graphing-started"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str


@dataclass
class GraphingFinished(Message):
    """The graph is known and the cache was asked once: `unbuilt` of `total` steps to build."""

    type: ClassVar[str] = "graphing-finished"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str
    total: int
    unbuilt: int
    system_cache_key: str
    cached: dict[str, str] = field(default_factory=dict)  # node id -> cache key, already built
    log_names: dict[str, str] = field(default_factory=dict)  # node id -> build-step log file
    # One line per unknown field met in the definitions: FILE:LINE: FIELD: unknown field...
    warnings: list[str] = field(default_factory=list)


@dataclass
class StepReady(Message):
    """A step can run and waits for a free worker slot."""

    type: ClassVar[str] = "step-ready"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str
    step: str
    log_name: str


@dataclass
class StepStarted(Message):
    """A step started on a worker; its log lines follow as StepOutput."""

    type: ClassVar[str] = "step-started"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str
    step: str
    log_name: str
    worker: str
    attempt: int = 1
    job: str = ""  # the attempt's id: attach-request counts lines seen per job


@dataclass
class StepOutput(Message):
    """Lines of a step's log; `first` is the number of the first in this attempt's log."""

    type: ClassVar[str] = "step-output"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str
    step: str
    lines: list[str]
    first: int | None = None


@dataclass
class StepFinished(Message):
    """A step built; `seconds` is its wall time on the worker."""

    type: ClassVar[str] = "step-finished"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str
    step: str
    worker: str
    seconds: float


@dataclass
class StepRetrying(Message):
    """A step's worker went away mid-step; the step is queued again."""

    type: ClassVar[str] = "step-retrying"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str
    step: str
    worker: str
    reason: str


@dataclass
class StepFailed(Message):
    """A step failed; the request fails with it."""

    type: ClassVar[str] = "step-failed"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str
    step: str
    worker: str
    reason: str
    last_lines: list[str] = field(default_factory=list)


@dataclass
class BuildProgress(Message):
    """How many of the request's steps are built."""

    type: ClassVar[str] = "build-progress"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str
    built: int
    total: int


@dataclass
class BuildFinished(Message):
    """The request is built; `artifacts` are the URLs of its system (or component) artifacts."""

    type: ClassVar[str] = "build-finished"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str
    artifacts: list[str]


@dataclass
class BuildFailed(Message):
    """The request failed."""

    type: ClassVar[str] = "build-failed"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str
    reason: str


@dataclass
class BuildCancelled(Message):
    """The request was cancelled."""

    type: ClassVar[str] = "build-cancelled"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str


@dataclass
class CancelRequest(Message):
    """Cancel a request (any authorized initiator may)."""

    type: ClassVar[str] = "cancel-request"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "client"
    request_id: str


@dataclass
class StatusRequest(Message):
    """Ask for one request's status."""

    type: ClassVar[str] = "status-request"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "client"
    request_id: str


@dataclass
class ListRequests(Message):
    """Ask for the list of requests, newest first; `state` "" means any."""

    type: ClassVar[str] = "list-requests"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "client"
    state: str = ""
    limit: int = 50


@dataclass
class StatusReply(Message):
    """One request's status (see docs/protocol.md for the fields of `request`)."""

    type: ClassVar[str] = "status-reply"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request: dict[str, Any]


@dataclass
class RequestList(Message):
    """Every request the controller knows, newest first."""

    type: ClassVar[str] = "request-list"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    requests: list[dict[str, Any]]


@dataclass
class Error(Message):
    """A request could not be served (unknown ID, bad definitions, ...)."""

    type: ClassVar[str] = "error"
    link: ClassVar[str] = "any"
    sender: ClassVar[str] = "controller"
    message: str
    request_id: str = ""


# This module's messages first, then those of `jobs`, `resume`, `verify`, `schedules` and
# `farm`, each in the order they are defined.
_ORDER = {__name__: 0, jobs.__name__: 1, resume.__name__: 2, verify.__name__: 3,
          schedules.__name__: 4, farm.__name__: 5}
MESSAGES: dict[str, type[Message]] = {
    cls.type: cls for cls in sorted(Message.__subclasses__(),  # type: ignore[misc]
                                    key=lambda c: _ORDER[c.__module__])
}

"""Messages of scheduled builds: add, remove, list and run schedules (initiators only).

Every one is answered with schedule-reply, or with error naming what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from distbuild.protocol.base import Message


@dataclass
class ScheduleAdd(Message):
    """Build SYSTEM from the tip of BRANCH `every` (6h) or at `cron` times (UTC)."""

    type: ClassVar[str] = "schedule-add"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "client"
    name: str
    system: str
    branch: str
    every: str = ""
    cron: str = ""
    definitions_repo: str = ""  # on the trove; the controller's definitions_repo if empty
    always: bool = False  # build even when the system's cache key is the last success's


@dataclass
class ScheduleRemove(Message):
    """Remove a schedule (its runs stay in the request list)."""

    type: ClassVar[str] = "schedule-remove"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "client"
    name: str


@dataclass
class ScheduleList(Message):
    """Ask for every schedule."""

    type: ClassVar[str] = "schedule-list"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "client"


@dataclass
class ScheduleRun(Message):
    """Run a schedule now, besides its own times."""

    type: ClassVar[str] = "schedule-run"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "client"
    name: str


@dataclass
class ScheduleReply(Message):
    """What was done; `schedules` as docs/protocol.md says; `request_id` of a run started."""

    type: ClassVar[str] = "schedule-reply"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    message: str
    schedules: list[dict[str, Any]] = field(default_factory=list)
    request_id: str = ""

"""Messages that show the farm: its workers and its queue (`distbuild workers`, `queue`).

They carry plain rows (see docs/protocol.md for their fields): the same rows
the dashboard's JSON API serves, so the command line and the web page agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from distbuild.protocol.base import Message


@dataclass
class WorkersRequest(Message):
    """Ask for every worker the controller knows and what each runs."""

    type: ClassVar[str] = "workers-request"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "client"


@dataclass
class WorkerList(Message):
    """The workers: name, arch, labels, slots, running steps, connected since, last heard."""

    type: ClassVar[str] = "worker-list"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    workers: list[dict[str, Any]]


@dataclass
class QueueRequest(Message):
    """Ask for the ready steps in the order they will run, and what waits on dependencies."""

    type: ClassVar[str] = "queue-request"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "client"


@dataclass
class QueueReply(Message):
    """Ready steps in dispatch order, each with why it waits; steps waiting on others."""

    type: ClassVar[str] = "queue-reply"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    ready: list[dict[str, Any]]
    waiting: list[dict[str, Any]] = field(default_factory=list)

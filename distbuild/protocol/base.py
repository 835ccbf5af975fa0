"""The protocol's version and the base of every message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

PROTOCOL_VERSION = 1


@dataclass
class Message:
    """Base of all messages; `type` is the wire name."""

    type: ClassVar[str] = ""
    link: ClassVar[str] = ""  # "any", "worker" or "initiator"
    sender: ClassVar[str] = ""  # "client", "controller" or "either"

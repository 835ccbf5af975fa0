"""Messages of reproducibility checks: a step built again elsewhere, its sha256s compared.

An initiator asks with verify-request; the controller answers verify-accepted
with the checks it queued and a verify-result as each ends. A worker that
runs a job-run with `verify` set uploads nothing and answers job-verified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from distbuild.protocol.base import Message


@dataclass
class VerifyRequest(Message):
    """Build steps of a request again on another worker and compare (no steps: every built one)."""

    type: ClassVar[str] = "verify-request"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "client"
    request_id: str
    steps: list[str] = field(default_factory=list)
    detach: bool = False  # answer verify-accepted only; results go to `status`


@dataclass
class VerifyAccepted(Message):
    """The checks queued: each `{id, step, cache_key, built_by}`."""

    type: ClassVar[str] = "verify-accepted"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str
    verifications: list[dict[str, Any]]


@dataclass
class VerifyResult(Message):
    """One check ended: `verification` as in status-reply's `verifications`."""

    type: ClassVar[str] = "verify-result"
    link: ClassVar[str] = "initiator"
    sender: ClassVar[str] = "controller"
    request_id: str
    verification: dict[str, Any]


@dataclass
class JobVerified(Message):
    """A verify job rebuilt its step: its artifacts (name -> {sha256, size}), what differs."""

    type: ClassVar[str] = "job-verified"
    link: ClassVar[str] = "worker"
    sender: ClassVar[str] = "client"
    job: str
    seconds: float
    artifacts: dict[str, Any] = field(default_factory=dict)
    # Artifact name -> [{path, stored, rebuilt}], for artifacts unlike the stored ones.
    differences: dict[str, Any] = field(default_factory=dict)

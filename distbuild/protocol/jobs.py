"""Messages of the worker link: a worker's capacity, its jobs, their output and results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from distbuild.protocol.base import Message


@dataclass
class WorkerReady(Message):
    """A worker's capacity: its arch, how many steps it runs at once, and its labels."""

    type: ClassVar[str] = "worker-ready"
    link: ClassVar[str] = "worker"
    sender: ClassVar[str] = "client"
    arch: str
    slots: int
    # Jobs this worker still holds from an earlier link (running, or ended but unreported);
    # the controller answers each with job-adopt or job-cancel.
    held: list[str] = field(default_factory=list)
    # What it offers beyond its arch (big-memory, kvm): steps may require labels.
    labels: list[str] = field(default_factory=list)
    # It takes artifact-prefetch (a controller never sends it to a worker that did not say so).
    prefetch: bool = False


@dataclass
class JobRun(Message):
    """Build one step. `step` and `closure` are graph nodes as plain data (docs/protocol.md)."""

    type: ClassVar[str] = "job-run"
    link: ClassVar[str] = "worker"
    sender: ClassVar[str] = "controller"
    job: str
    step: dict[str, Any]
    closure: list[dict[str, Any]]
    trove_git_url: str
    artifact_cache_url: str
    token: str
    # A reproducibility check: build, upload nothing, answer job-verified.
    verify: bool = False


@dataclass
class ArtifactPrefetch(Message):
    """Chunk artifacts just built that queued steps stage: fetch them now, if there is room."""

    type: ClassVar[str] = "artifact-prefetch"
    link: ClassVar[str] = "worker"
    sender: ClassVar[str] = "controller"
    artifact_cache_url: str
    artifacts: dict[str, Any]  # filename -> {sha256, size}, as in job-finished


@dataclass
class JobCancel(Message):
    """Stop a running job and its whole process tree."""

    type: ClassVar[str] = "job-cancel"
    link: ClassVar[str] = "worker"
    sender: ClassVar[str] = "controller"
    job: str


@dataclass
class JobOutput(Message):
    """Lines of a job's log, as they come; `first` is the number of the first (from 0)."""

    type: ClassVar[str] = "job-output"
    link: ClassVar[str] = "worker"
    sender: ClassVar[str] = "client"
    job: str
    lines: list[str]
    first: int | None = None


@dataclass
class JobFinished(Message):
    """The job built and uploaded its artifacts (name -> {sha256, size})."""

    type: ClassVar[str] = "job-finished"
    link: ClassVar[str] = "worker"
    sender: ClassVar[str] = "client"
    job: str
    seconds: float  # the whole step on the worker
    artifacts: dict[str, Any] = field(default_factory=dict)
    command_seconds: float = 0.0  # the part spent running the step's own commands
    fetched_bytes: int = 0  # downloaded from the artifact cache to stage the step
    sent_bytes: int = 0  # uploaded to the artifact cache: artifacts, metadata and log
    receipt: str = ""  # the artifact cache's signed word that it holds the step's source


@dataclass
class JobFailed(Message):
    """The job failed: why, the failing command's exit code, and its last log lines."""

    type: ClassVar[str] = "job-failed"
    link: ClassVar[str] = "worker"
    sender: ClassVar[str] = "client"
    job: str
    reason: str
    exit_code: int | None = None
    last_lines: list[str] = field(default_factory=list)
    cancelled: bool = False

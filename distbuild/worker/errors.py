"""The ways a build step fails, each with its own message."""

from __future__ import annotations

from collections.abc import Sequence

from distbuild.errors import DistbuildError


class StepError(DistbuildError):
    """A build step failed; `where` names the node."""


class CommandFailed(StepError):
    """A build command exited with a non-zero status."""

    def __init__(self, node_id: str, phase: str, command: str, status: int,
                 last_lines: Sequence[str]):
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        # The first line is the summary the initiator shows; the lines follow it only
        # when there are some, so the summary never ends in a dangling heading.
        summary = f"{phase} command {command!r} {how}"
        tail = "".join(f"\n{line}" for line in last_lines)
        super().__init__(f"{summary}\nlast lines of output:{tail}" if last_lines else summary,
                         node_id)
        self.phase = phase
        self.command = command
        self.status = status
        self.last_lines = tuple(last_lines)


class SourceError(StepError):
    """The source repository or the commit to build is not available."""


class MissingArtifact(StepError):
    """A dependency's artifact is not in the artifact cache."""


class CorruptArtifact(StepError):
    """An artifact's content does not match its recorded sha256."""


class DiskFull(StepError):
    """The worker's disk filled up during the step; trying elsewhere may help."""

    def __init__(self, what: str, where: str | None = None):
        super().__init__(what, where, retryable=True)

"""The build-step-*.log files: one per step, written afresh when it starts, appended live.

A file starts with a line naming the request, so that a rebuild's log is not
mistaken for the previous build's (a retried step goes on in the same file).

Lines are flushed as they arrive so that `tail -f build-step-*.log` follows
the build. Status lines ("Started building X on W", "Finished building X on
W", "Build of X failed.") are stamped like the worker's own lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from distbuild.timestamps import log_stamp


class StepLogs:
    """The open log files of one build, by step (node id)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.request_id = ""
        self.files: dict[str, IO[str]] = {}
        self.paths: dict[str, Path] = {}

    def path(self, step: str) -> Path | None:
        return self.paths.get(step)

    def open(self, step: str, name: str) -> Path:
        """Start (or continue, for a retried step) the log of `step` in file `name`."""
        if step not in self.files:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / Path(name).name
            self.paths[step] = path
            self.files[step] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - kept open
            self.status(step, f"Log of {step} for request {self.request_id or '(unknown)'}")
        return self.paths[step]

    def status(self, step: str, text: str) -> None:
        self.lines(step, [f"{log_stamp()} {text}"])

    def lines(self, step: str, lines: list[str]) -> None:
        f = self.files.get(step)
        if f is not None:
            f.write("".join(line + "\n" for line in lines))
            f.flush()

    def write_whole(self, step: str, name: str, content: bytes) -> Path:
        """A finished step's log fetched from the cache, written in one go."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / Path(name).name
        path.write_bytes(content)
        self.paths[step] = path
        return path

    def close(self, step: str | None = None) -> None:
        for key in [step] if step else list(self.files):
            f = self.files.pop(key, None)
            if f is not None:
                f.close()

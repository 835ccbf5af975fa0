"""The two timestamp formats distbuild prints, both UTC."""

from __future__ import annotations

from datetime import datetime, timezone


def log_stamp() -> str:
    """Build-step log lines: ISO 8601 with milliseconds, e.g. 2026-11-22T07:01:02.345Z."""
    # isoformat, not strftime: a quarter of the time, and workers stamp every output line.
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")[:23] + "Z"


def terminal_stamp() -> str:
    """Terminal lines, as morph printed them: 2026-11-22 07:01:02."""
    return datetime.now(timezone.utc).isoformat(" ", "seconds")[:19]


def service_logger(component: str):
    """A function that prints `STAMP COMPONENT: MESSAGE` lines to stderr, for the services."""
    import sys

    def log(message: str) -> None:
        print(f"{terminal_stamp()} {component}: {message}", file=sys.stderr, flush=True)

    return log

"""Schedules of builds: when each runs, from `--every DURATION` or `--cron EXPRESSION`.

Pure: no clock and no I/O; times are Unix seconds, cron expressions are read
in UTC. The missed-slot rule lives here: a schedule whose slots passed while
nothing ran it (the controller was down) runs once, then counts its next
slot from that run, never once per missed slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from distbuild.errors import DistbuildError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MIN_EVERY = 1.0


class ScheduleError(DistbuildError):
    """A schedule's name, period or cron expression is wrong."""


def parse_every(text: str) -> float:
    """`6h`, `90m`, `1h30m`, `10s`, `2d`, `1w` as seconds."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ScheduleError(f"'{text}' is not a duration such as 6h, 90m, 1h30m or 30s",
                            "--every")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds < MIN_EVERY:
        raise ScheduleError(f"'{text}' is less than {MIN_EVERY:g} s", "--every")
    return seconds


def check_cron(expr: str) -> str:
    """`expr` if it is a five-field cron expression croniter reads; else ScheduleError."""
    from croniter import croniter

    fields = expr.split()
    if len(fields) != 5 or not croniter.is_valid(expr):
        raise ScheduleError(f"'{expr}' is not a cron expression of five fields (minute hour "
                            "day-of-month month day-of-week), such as '0 3 * * *'", "--cron")
    return " ".join(fields)


def check_name(name: str) -> str:
    """`name` if it is a schedule name (letters, digits, `.`, `_`, `-`; up to 64)."""
    if not NAME.fullmatch(name):
        raise ScheduleError(f"'{name}' is not a schedule name (letters, digits, '.', '_' "
                            "and '-', starting with a letter or digit, at most 64)", "NAME")
    return name


@dataclass(frozen=True)
class Timing:
    """When a schedule runs: every `every` seconds from `anchor`, or at the `cron` times."""

    every: float | None = None
    cron: str | None = None
    anchor: float = 0.0  # when the schedule was added: --every slots count from here

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ScheduleError("give exactly one of --every and --cron", "schedule")

    def next_after(self, t: float) -> float:
        """The first slot strictly after `t`."""
        if self.every is not None:
            if t < self.anchor:
                return self.anchor + self.every
            return self.anchor + (int((t - self.anchor) // self.every) + 1) * self.every
        from croniter import croniter

        start = datetime.fromtimestamp(t, timezone.utc)
        return float(croniter(self.cron, start).get_next(float))

    def describe(self) -> str:
        """`every 6h` or `cron 0 3 * * * (UTC)`, for listings."""
        if self.every is not None:
            return f"every {_duration(self.every)}"
        return f"cron {self.cron} (UTC)"


def due(timing: Timing, counted_from: float, now: float) -> bool:
    """Whether a slot after `counted_from` (the last run, or when added) has come by `now`.

    The caller runs the schedule once and counts from `now` again: slots missed
    meanwhile, however many, make that one run.
    """
    return timing.next_after(counted_from) <= now


def _duration(seconds: float) -> str:
    out, left = [], seconds
    for unit in ("w", "d", "h", "m", "s"):
        n, left = divmod(left, _UNITS[unit])
        if n:
            out.append(f"{int(n)}{unit}")
    return "".join(out) or f"{seconds:g}s"

"""Tables, durations and times as the farm commands print them."""

from __future__ import annotations

import time
from collections.abc import Sequence


def table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [*(str(c).ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)),
                 str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def seconds(value: float | None) -> str:
    """A duration as people read it: 42s, 3m07s, 2h05m."""
    if value is None:
        return "-"
    s = round(value)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def when(stamp: float | None) -> str:
    """A UTC time to the second, or - for none."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp)) if stamp else "-"

"""JSON from peers with a bound on nesting: deep brackets are refused, not a RecursionError.

Used by every service that parses JSON a peer sent (controller links, the
trove's HTTP API). No valid distbuild document nests anywhere near the limit.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


class TooDeep(ValueError):
    """The document nests lists and objects deeper than allowed."""


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse `data`; raise TooDeep past `max_depth` levels, ValueError if it is not JSON."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    # Fewer brackets than the limit cannot nest past it: the common case costs two scans in C.
    suspicious = data.count(b"[") + data.count(b"{") > max_depth
    try:
        value = json.loads(data)
    except RecursionError:
        raise TooDeep(f"JSON nested deeper than {max_depth} levels") from None
    if suspicious and _depth_over(value, max_depth):
        raise TooDeep(f"JSON nested deeper than {max_depth} levels")
    return value


def _depth_over(value: Any, max_depth: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth > max_depth:
            return True
        stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return False

"""Names of the build-step log files an initiator writes.

Chunks are named by their chunk name, as the Baserock guide shows
(`build-step-pango-misc.log` style: `build-step-CHUNK.log`). A chunk name
used in two strata becomes `build-step-STRATUM-CHUNK.log` for both; strata
are `build-step-stratum-NAME.log` and the system `build-step-system-NAME.log`.
Any name that would still clash falls back to one derived from the node ID.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text)


def log_names(node_ids: Iterable[str]) -> dict[str, str]:
    """node id (chunk:S/C, stratum:S, system:S) -> log file name; names never clash."""
    ids = list(node_ids)
    chunk_names = Counter(i.split("/", 1)[1] for i in ids if i.startswith("chunk:"))
    names: dict[str, str] = {}
    for nid in ids:
        kind, _, rest = nid.partition(":")
        if kind == "chunk":
            stratum, _, chunk = rest.partition("/")
            base = chunk if chunk_names[chunk] == 1 else f"{stratum}-{chunk}"
        else:
            base = f"{kind}-{rest}"
        names[nid] = f"build-step-{_safe(base)}.log"
    clashes = Counter(names.values())
    for nid, name in names.items():
        if clashes[name] > 1:
            names[nid] = f"build-step-{_safe(nid.replace(':', '-').replace('/', '-'))}.log"
    return names

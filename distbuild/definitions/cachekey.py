"""Cache keys: sha256 over an unambiguous, canonical serialisation.

Morph hashed a separator-less walk of a dict, so different inputs could give
the same bytes. Here the input is JSON with sorted keys and typed values
(strings, numbers, lists, mappings stay distinct), prefixed by a format tag so
a change of format can never collide with old keys.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_FORMAT = "distbuild-cache-key/1"


def canonical(value: Any) -> bytes:
    """The canonical bytes of a JSON-able value: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def cache_key(inputs: dict[str, Any], dependency_keys: list[str]) -> str:
    """sha256 of everything that affects a step's output and of its direct dependencies' keys."""
    body = {"format": KEY_FORMAT, "inputs": inputs, "depends": sorted(dependency_keys)}
    return hashlib.sha256(canonical(body)).hexdigest()

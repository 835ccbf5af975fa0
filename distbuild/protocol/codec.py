"""Messages to JSON lines and back, checking every field's type.

A malformed line is a ProtocolError that names the peer and says what was
wrong, so a bad or incompatible peer gets a clear message instead of a hang.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from functools import cache
from typing import Any

from distbuild import jsonlimit
from distbuild.errors import DistbuildError
from distbuild.protocol.messages import MESSAGES, Message

MAX_LINE = 16 * 1024 * 1024  # a step can carry a large closure; anything beyond is an attack


class ProtocolError(DistbuildError):
    """A peer sent something that is not a valid message."""


class Encoded(list):
    """A list of JSON values that also carries its JSON text, which `encode` uses as is.

    A job's closure is the same node dicts job after job; encoding each once and
    joining the texts keeps sending a job from growing with the depth of the graph.
    """

    def __init__(self, items: list, texts: list[str]):
        super().__init__(items)
        self.json = "[" + ",".join(texts) + "]"


def encode(message: Message) -> bytes:
    """One JSON line, `type` first; ProtocolError if it would be over the peer's limit."""
    # Fields hold JSON values only (decode builds them from JSON), so a shallow copy is
    # enough: asdict would deep-copy a job's whole closure for every job.
    body: dict[str, Any] = {"type": message.type}
    spliced = []
    for name in _names(type(message)):
        value = getattr(message, name)
        if isinstance(value, Encoded):
            spliced.append(f',"{name}":{value.json}')
        else:
            body[name] = value
    text = json.dumps(body, separators=(",", ":"))
    if spliced:
        text = text[:-1] + "".join(spliced) + "}"
    data = text.encode("utf-8") + b"\n"
    if len(data) > MAX_LINE:
        raise ProtocolError(f"{message.type} of {len(data)} bytes is over the "
                            f"{MAX_LINE}-byte limit; not sent", "this end")
    return data


@cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def decode(line: bytes | str, peer: str) -> Message:
    """Parse one line from `peer` into its message dataclass."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"message of {len(line)} bytes is over the limit", peer)
    try:
        body = jsonlimit.loads(line)
    except jsonlimit.TooDeep as e:
        raise ProtocolError(f"sent a message with {e}", peer) from None
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("sent a line that is not JSON", peer) from None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise ProtocolError("sent a message without a type", peer)
    cls = MESSAGES.get(body.pop("type"))
    if cls is None:
        raise ProtocolError(f"sent an unknown message type {line[:60]!r}", peer)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in body:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{cls.type}: field '{f.name}' is missing", peer)
            continue
        value = body.pop(f.name)
        if not _fits(value, _hints(cls)[f.name]):
            raise ProtocolError(f"{cls.type}: field '{f.name}' has the wrong type", peer)
        kwargs[f.name] = value
    # Unknown fields are ignored: a later minor revision may add optional ones.
    return cls(**kwargs)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)

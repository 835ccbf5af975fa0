"""The message tables of docs/protocol.md, generated from the message dataclasses.

`python -m distbuild.protocol.table` prints them; a test checks the document
holds exactly this text, so the protocol's documentation cannot drift.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from distbuild.protocol.messages import MESSAGES

HEADINGS = {"any": "Both links", "worker": "Worker link", "initiator": "Initiator link"}


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    if origin is dict:
        return "object"
    return {str: "string", int: "integer", float: "number", bool: "boolean",
            type(None): "null"}.get(hint, str(hint))


def markdown() -> str:
    """Markdown tables of every message, by link."""
    out = []
    for link, heading in HEADINGS.items():
        out += [f"### {heading}", "", "| type | sent by | fields | meaning |",
                "| --- | --- | --- | --- |"]
        for name, cls in MESSAGES.items():
            if cls.link != link:
                continue
            hints = typing.get_type_hints(cls)
            fields = []
            for f in dataclasses.fields(cls):
                optional = (f.default is not dataclasses.MISSING
                            or f.default_factory is not dataclasses.MISSING)
                fields.append(f"`{f.name}`{'?' if optional else ''}: {_type_name(hints[f.name])}")
            meaning = (cls.__doc__ or "").strip().splitlines()[0]
            out.append(f"| `{name}` | {cls.sender} | {'<br>'.join(fields) or '—'} | {meaning} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")

"""Parsing morphology YAML fast, and finding the line of a field only when reporting an error."""

from __future__ import annotations

from typing import Any

import yaml

from distbuild.errors import DefinitionsError

try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader


def parse(text: bytes, where: str) -> Any:
    """Parse YAML text; a syntax error names the file and line."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise DefinitionsError(f"YAML syntax error: {problem}", f"{where}{line}") from None
    except UnicodeDecodeError:
        raise DefinitionsError("file is not UTF-8 text", where) from None


def line_of(text: bytes, keypath: tuple[Any, ...]) -> int | None:
    """The 1-based line where `keypath` (mapping keys and list indexes) is written, if known.

    Composing keeps positions that the fast loader throws away; it runs only
    on the error path, so loading stays fast.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for step in keypath:
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            for key, value in node.value:
                if key.value == step:
                    line = key.start_mark.line + 1
                    node = value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            if step >= len(node.value):
                return line
            node = node.value[step]
            line = node.start_mark.line + 1
        else:
            return line
    return line

"""Build graphs for worker tests: the example system from the real definitions engine.

The example sources become git repositories under a directory, and the
`upstream:` alias points there, so no trove is needed; refs are resolved
with git as a worker's controller would.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from distbuild.definitions import (
    Aliases,
    BuildGraph,
    Definitions,
    DirectorySource,
    Node,
    SplitRule,
    build_graph,
)
from distbuild.examples import MORPHS
from distbuild.trove.refs import GitResolver

SYSTEM = "systems/example-system-x86_64.morph"


def example_graph(repos: Path, mirrors: Path) -> BuildGraph:
    """The example system's graph, its `upstream:NAME` repositories at `repos`/NAME."""
    aliases = Aliases.from_config(None, [f"upstream={repos}/%s#unused"])
    return build_graph(Definitions(DirectorySource(MORPHS)), SYSTEM, GitResolver(mirrors),
                       aliases)


def split_rules(kind: str, name: str) -> tuple[SplitRule, ...]:
    """The default split rules of DEFAULTS in morphs/, for a chunk or stratum `name`."""
    defaults = yaml.safe_load((MORPHS / "DEFAULTS").read_text())
    return tuple(SplitRule(name + r["artifact"], tuple(r["include"]))
                 for r in defaults["split-rules"][kind])


def chunk_node(repo: Path, commit: str, commands: dict[str, tuple[str, ...]], *,
               name: str = "testchunk", depends: tuple[str, ...] = (),
               build_mode: str = "staging", stratum: str = "tests",
               key: str = "") -> Node:
    """A one-off chunk node for failure tests; `commands` maps phase -> commands."""
    return Node(
        id=f"chunk:{stratum}/{name}", kind="chunk", name=name, arch="x86_64",
        stratum=stratum, depends=depends,
        cache_key=key or hashlib.sha256(f"{name}\0{commit}\0{commands!r}".encode()).hexdigest(),
        repo=str(repo), ref="master", commit=commit, build_mode=build_mode, prefix="/usr",
        commands=tuple(commands.items()), split_rules=split_rules("chunk", name))

"""What a step needs to know about a node, until the definitions engine provides it.

`StepSpec` has the same fields as `distbuild.definitions.graph.Node`, so the
step runner accepts either: it reads attributes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SplitRule:
    """Files (or chunk artifact names) matching any pattern in `include` go to `artifact`."""

    artifact: str
    include: tuple[str, ...]


@dataclass
class StepSpec:
    """One node of a build graph: a chunk, a stratum or a system."""

    id: str
    kind: str
    name: str
    arch: str
    stratum: str | None = None
    depends: tuple[str, ...] = ()
    cache_key: str = ""
    repo: str | None = None
    ref: str | None = None
    commit: str | None = None
    tree: str | None = None
    build_mode: str | None = "staging"
    prefix: str | None = "/usr"
    build_system: str | None = None
    commands: tuple[tuple[str, tuple[str, ...]], ...] = ()
    max_jobs: int | None = None
    system_integration: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    devices: tuple[dict[str, Any], ...] = ()
    submodules: dict[str, Any] = field(default_factory=dict)
    split_rules: tuple[SplitRule, ...] = ()
    artifact_overrides: dict[str, str] = field(default_factory=dict)
    strata_artifacts: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    configuration_extensions: tuple[str, ...] = ()

"""The definitions data model: what a definitions tree says, already validated.

These objects mirror the morphology files (chunk, stratum, system, cluster)
plus DEFAULTS. They hold plain values; the build graph (graph.py) combines
them into steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Build phases in the order they run; each has pre- and post- lists around it.
PHASES = ("configure", "build", "test", "install", "strip")
COMMAND_FIELDS = tuple(
    f"{prefix}{phase}-commands" for phase in PHASES for prefix in ("pre-", "", "post-")
)
BUILD_MODES = ("staging", "bootstrap", "test")
ARCHES = (
    "x86_64", "x86_32", "armv5l", "armv7l", "armv7b", "armv7lhf", "armv8l64", "armv8b64",
    "ppc64", "mips32l", "mips32b", "mips64l", "mips64b", "testarch",
)


@dataclass(frozen=True)
class SplitRule:
    """Files (or chunk artifacts) whose path matches one of `include` go to `artifact`."""

    artifact: str
    include: tuple[str, ...]


@dataclass(frozen=True)
class BuildSystem:
    """A named set of default command lists (configure, build, install, strip)."""

    name: str
    commands: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Defaults:
    """DEFAULTS: build systems and the default split rules (artifact names are suffixes)."""

    build_systems: dict[str, BuildSystem]
    chunk_split_rules: tuple[SplitRule, ...]
    stratum_split_rules: tuple[SplitRule, ...]


@dataclass(frozen=True)
class Chunk:
    """A chunk morphology file: how to build one source."""

    path: str
    name: str
    description: str = ""
    build_system: str | None = None
    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)
    products: tuple[SplitRule, ...] = ()
    max_jobs: int | None = None
    devices: tuple[dict[str, Any], ...] = ()
    system_integration: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    prefix: str | None = None
    build_mode: str | None = None


@dataclass(frozen=True)
class ChunkSpec:
    """One entry of a stratum's `chunks`: which source, at which ref, built how."""

    index: int
    name: str
    repo: str
    ref: str
    unpetrify_ref: str | None = None
    morph: str | None = None
    build_system: str | None = None
    build_depends: tuple[str, ...] = ()
    build_mode: str | None = None
    prefix: str | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    submodules: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stratum:
    """A stratum morphology: a set of chunks, built on other strata."""

    path: str
    name: str
    chunks: tuple[ChunkSpec, ...]
    description: str = ""
    build_depends: tuple[str, ...] = ()
    products: tuple[SplitRule, ...] = ()


@dataclass(frozen=True)
class StratumRef:
    """One entry of a system's `strata`."""

    index: int
    name: str
    morph: str
    artifacts: tuple[str, ...] | None = None


@dataclass(frozen=True)
class System:
    """A system morphology: strata assembled into a root filesystem for one arch."""

    path: str
    name: str
    arch: str
    strata: tuple[StratumRef, ...]
    description: str = ""
    configuration_extensions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterSystem:
    """A system to deploy, its deployments by ID, and its subsystems."""

    morph: str
    deploy_defaults: dict[str, Any]
    deploy: dict[str, dict[str, Any]]
    subsystems: tuple[ClusterSystem, ...] = ()


@dataclass(frozen=True)
class Cluster:
    """A cluster morphology: systems and where to deploy them."""

    path: str
    name: str
    systems: tuple[ClusterSystem, ...]
    description: str = ""

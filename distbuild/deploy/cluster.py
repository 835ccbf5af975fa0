"""Expanding a cluster morphology into the deployments to run.  [core]

Settings merge with later winning: a system's deploy-defaults, then the
deployment's own entry, then `ID.KEY=VALUE` from the command line. Values
written in the cluster may use `$VAR` or `${VAR}` (`$$` is a literal `$`);
variables come from `NAME=VALUE` on the command line, then the environment.
Values given on the command line are taken literally: the shell has already
expanded them once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distbuild.definitions.model import Cluster, ClusterSystem
from distbuild.deploy.errors import DeployError

_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)|(\$))")


@dataclass(frozen=True)
class CommandLine:
    """What followed the cluster on the command line, sorted by shape."""

    deployments: tuple[str, ...] = ()
    settings: dict[str, dict[str, str]] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Deployment:
    """One deployment: which system, which write extension, where, and its settings.

    `settings` are the extension's environment variables (everything but
    `type` and `location`), already substituted and turned into strings.
    """

    id: str
    morph: str
    type: str
    location: str
    settings: dict[str, str]
    subsystems: tuple[Deployment, ...] = ()

    def walk(self) -> Iterable[Deployment]:
        """This deployment, then its subsystems' deployments, depth first."""
        yield self
        for sub in self.subsystems:
            yield from sub.walk()


def parse_arguments(args: Iterable[str]) -> CommandLine:
    """Sort `DEPLOYMENT`, `ID.KEY=VALUE` and `NAME=VALUE` arguments apart."""
    names: list[str] = []
    settings: dict[str, dict[str, str]] = {}
    variables: dict[str, str] = {}
    for arg in args:
        target, eq, value = arg.partition("=")
        if not eq:
            names.append(arg)
            continue
        ident, dot, key = target.partition(".")
        if not target or (dot and not (ident and key)):
            raise DeployError(f"'{arg}' is not DEPLOYMENT, ID.KEY=VALUE or NAME=VALUE",
                              "command line")
        if dot:
            settings.setdefault(ident, {})[key] = value
        else:
            variables[target] = value
    return CommandLine(tuple(names), settings, variables)


def expand(cluster: Cluster, command_line: CommandLine,
           environ: Mapping[str, str]) -> tuple[Deployment, ...]:
    """The deployments chosen on the command line (all when none are named), in file order.

    A subsystem's deployments go with their parent and cannot be chosen alone.
    """
    top, sub = _deployment_ids(cluster)
    _check_names(cluster, command_line, top, sub)
    chosen = set(command_line.deployments) or set(top)
    variables = {**environ, **command_line.variables}
    context = _Context(cluster.path, command_line.settings, variables)
    out: list[Deployment] = []
    for system in cluster.systems:
        out += [context.deployment(system, ident) for ident in system.deploy if ident in chosen]
    return tuple(out)


def _deployment_ids(cluster: Cluster) -> tuple[dict[str, str], dict[str, str]]:
    """Top-level and subsystem deployment IDs, each mapped to its parent (or '')."""
    seen: set[str] = set()
    top: dict[str, str] = {}
    sub: dict[str, str] = {}

    def visit(systems: tuple[ClusterSystem, ...], parent: str | None) -> None:
        for system in systems:
            for ident in system.deploy:
                if ident in seen:
                    raise DeployError(f"deployment ID '{ident}' is used twice", cluster.path)
                seen.add(ident)
                (top if parent is None else sub)[ident] = parent or ""
            # A subsystem belongs to each of its parent system's deployments;
            # the first names it in messages.
            first = next(iter(system.deploy), parent or "")
            visit(system.subsystems, first)

    visit(cluster.systems, None)
    return top, sub


def _check_names(cluster: Cluster, command_line: CommandLine,
                 top: dict[str, str], sub: dict[str, str]) -> None:
    known = ", ".join(top) or "none"
    for name in command_line.deployments:
        if name in sub:
            raise DeployError(
                f"'{name}' is a subsystem deployment; it is deployed with its parent "
                f"'{sub[name]}' and cannot be deployed on its own", cluster.path)
        if name not in top:
            raise DeployError(f"no deployment named '{name}' (deployments: {known})",
                              cluster.path)
    for ident in command_line.settings:
        if ident not in top and ident not in sub:
            key = next(iter(command_line.settings[ident]))
            raise DeployError(f"'{ident}.{key}=...' names no deployment of the cluster "
                              f"(deployments: {', '.join([*top, *sub])})", "command line")


@dataclass(frozen=True)
class _Context:
    cluster_path: str
    overrides: dict[str, dict[str, str]]
    variables: Mapping[str, str]

    def deployment(self, system: ClusterSystem, ident: str) -> Deployment:
        where = f"{self.cluster_path}: deployment '{ident}'"
        merged = {
            key: self._substitute(value, f"{where}: {key}")
            for key, value in {**system.deploy_defaults, **system.deploy[ident]}.items()
        }
        merged.update(self.overrides.get(ident, {}))
        for required in ("type", "location"):
            if required not in merged:
                raise DeployError(f"no '{required}' (set it in the cluster or as "
                                  f"{ident}.{required}=...)", where)
        settings = {str(k): _env_string(v) for k, v in merged.items()}
        for key, value in settings.items():
            # Settings become environment variables, which cannot hold these.
            if not key or "=" in key or "\0" in key:
                raise DeployError(f"setting name {key!r} cannot be an environment variable",
                                  where)
            if "\0" in value:
                raise DeployError(f"setting {key} holds a NUL character", where)
        kind = settings.pop("type")
        location = settings.pop("location")
        subsystems = tuple(self.deployment(sub, sub_id)
                           for sub in system.subsystems for sub_id in sub.deploy)
        return Deployment(ident, system.morph, kind, location, settings, subsystems)

    def _substitute(self, value: Any, where: str) -> Any:
        if isinstance(value, str):
            return _VARIABLE.sub(lambda m: self._lookup(m, where), value)
        if isinstance(value, list):
            return [self._substitute(v, where) for v in value]
        if isinstance(value, dict):
            return {k: self._substitute(v, where) for k, v in value.items()}
        return value

    def _lookup(self, match: re.Match, where: str) -> str:
        if match.group(3):
            return "$"
        name = match.group(1) or match.group(2)
        if name not in self.variables:
            raise DeployError(f"variable ${name} is not set (set it in the environment "
                              f"or give {name}=VALUE on the command line)", where)
        return self.variables[name]


def _env_string(value: Any) -> str:
    """A setting as an environment variable's value.

    Scalars become what Baserock's morph passed (`str()`: True, False, None),
    so existing extensions see what they always saw; lists and mappings
    become JSON, which extensions can read back with a YAML or JSON parser.
    """
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)

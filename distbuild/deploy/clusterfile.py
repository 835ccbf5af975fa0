"""Reading a cluster morphology into the model the definitions engine gives.

Stand-in for `distbuild.definitions` until it lands on main: the same
`Cluster` and `ClusterSystem` shapes, validated for types, with YAML anchors
and aliases resolved by the YAML loader. Errors name the file and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distbuild.deploy.errors import DeployError

try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader


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


_SYSTEM_KEYS = {"morph", "deploy-defaults", "deploy", "subsystems"}


def load_cluster(path: Path, where: str | None = None) -> Cluster:
    """Parse and validate the cluster morphology at `path`; `where` names it in errors."""
    where = where or str(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise DeployError("cluster morphology does not exist", where) from None
    except OSError as e:
        raise DeployError(f"cannot read cluster morphology: {e.strerror}", where) from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise DeployError(f"YAML syntax error: {getattr(e, 'problem', None) or e}",
                          f"{where}{line}") from None
    if not isinstance(data, dict):
        raise DeployError("a morphology must be a mapping", where)
    if data.get("kind") != "cluster":
        raise DeployError(f"kind is {data.get('kind')!r}, expected 'cluster'", where)
    unknown = set(data) - {"name", "kind", "description", "systems"}
    if unknown:
        raise DeployError(f"unknown field '{sorted(unknown)[0]}'", where)
    name = _string(data.get("name", path.stem), f"{where}: name")
    systems = _systems(data.get("systems"), f"{where}: systems")
    return Cluster(path=str(path), name=name, systems=systems,
                   description=str(data.get("description") or ""))


def _systems(value: Any, where: str) -> tuple[ClusterSystem, ...]:
    if not isinstance(value, list):
        raise DeployError("expected a list of systems", where)
    return tuple(_system(item, f"{where}[{i}]") for i, item in enumerate(value))


def _system(value: Any, where: str) -> ClusterSystem:
    if not isinstance(value, dict):
        raise DeployError("expected a mapping with 'morph' and 'deploy'", where)
    unknown = set(value) - _SYSTEM_KEYS
    if unknown:
        raise DeployError(f"unknown field '{sorted(unknown)[0]}'", where)
    if "morph" not in value:
        raise DeployError("missing field 'morph'", where)
    deploy = value.get("deploy") or {}
    _mapping(deploy, f"{where}: deploy")
    for ident, entry in deploy.items():
        _mapping(entry, f"{where}: deploy: {ident}")
    return ClusterSystem(
        morph=_string(value["morph"], f"{where}: morph"),
        deploy_defaults=dict(_mapping(value.get("deploy-defaults") or {},
                                      f"{where}: deploy-defaults")),
        deploy={str(k): dict(v) for k, v in deploy.items()},
        subsystems=_systems(value.get("subsystems") or [], f"{where}: subsystems"),
    )


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise DeployError(f"expected a mapping, got {value!r}", where)
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DeployError(f"expected a string, got {value!r}", where)
    return value

"""The shared YAML configuration file read by every component.

One file format for the trove, controller, workers and clients. Keys are
case-insensitive so that the keys deployment writes to
/etc/distbuild/distbuild.conf (DISTBUILD_CONTROLLER, TROVE_HOST, ...) and the
lower-case keys `distbuild up` writes into network.yaml are the same keys.
Each component reads its settings into a dataclass with `section`, which
refuses unknown keys and wrong types with a message naming file and key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from distbuild.errors import ConfigError

T = TypeVar("T")

CONFIG_ENV = "DISTBUILD_CONFIG"

try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader


def user_cache_dir() -> Path:
    """distbuild's directory under the user's cache ($XDG_CACHE_HOME or ~/.cache)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache) / "distbuild"


def config_path(explicit: str | None) -> Path | None:
    """The configuration file named by --config, else by $DISTBUILD_CONFIG, else none."""
    chosen = explicit or os.environ.get(CONFIG_ENV)
    return Path(chosen) if chosen else None


def load(path: Path | None) -> dict[str, Any]:
    """Read a configuration file into a dict with lower-case keys; no file gives {}."""
    if path is None:
        return {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("configuration file does not exist", str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot read configuration file: {e.strerror}", str(path)) from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"YAML syntax error: {problem}", where) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("configuration must be a mapping of keys to values", str(path))
    return _lower_keys(data, str(path))


def _lower_keys(data: dict, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).lower().replace("-", "_")
        if name in out:
            raise ConfigError(f"key '{key}' is given twice (keys are case-insensitive)", where)
        out[name] = _lower_keys(value, where) if isinstance(value, dict) else value
    return out


def section(cls: type[T], values: dict[str, Any], where: str, **overrides: Any) -> T:
    """Build dataclass `cls` from `values`; `overrides` that are not None win (CLI options)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown key '{key}' (known keys: {known})", where)
        kwargs[key] = _coerce(value, hints[key], f"{where}: {key}")
    for key, value in overrides.items():
        if value is not None:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError:
        missing = [
            n for n, f in fields.items()
            if n not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        raise ConfigError(f"missing required key(s): {', '.join(missing)}", where) from None


def component_settings(cls: type[T], explicit_path: str | None, name: str, /,
                       **overrides: Any) -> T:
    """A service's settings: section `name` of the configuration file, then `overrides`.

    Relative paths written in the file are relative to the file, as in
    network.yaml; paths given as overrides (command-line options) are left as given.
    """
    path = config_path(explicit_path)
    values = load(path)
    where = f"{path}: {name}" if path else name
    section_values = values.get(name) or {}
    if not isinstance(section_values, dict):
        raise ConfigError(f"the {name} section must be a mapping of settings", where)
    settings = section(cls, section_values, where, **overrides)
    if path is not None:
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            value = getattr(settings, f.name)
            if (isinstance(value, Path) and not value.is_absolute() and f.name in section_values
                    and overrides.get(f.name) is None):
                setattr(settings, f.name, path.parent / value)
    return settings


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"expected {_type_name(hint)}, got {value!r}", where)
    if hint is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, got {value!r}", where)
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_coerce(v, item, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", where)
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("yes", "true", "1", "no", "false", "0"):
            return value.lower() in ("yes", "true", "1")
        raise ConfigError(f"expected yes or no, got {value!r}", where)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        raise ConfigError(f"expected a whole number, got {value!r}", where)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"expected a number, got {value!r}", where)
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"expected a string, got {value!r}", where)
    if hint is Path:
        if isinstance(value, str):
            return Path(value)
        raise ConfigError(f"expected a path, got {value!r}", where)
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


@dataclass
class ClientSettings:
    """The top-level keys every client command reads (the keys `distbuild up` writes)."""

    controller_initiator_address: str | None = None
    controller_initiator_port: int = 7878
    artifact_cache_url: str | None = None
    trove_git_url: str | None = None
    # ssh://git@HOST:PORT: where the trove accepts authenticated pushes.
    trove_ssh_url: str | None = None
    definitions_url: str | None = None
    # The trove repository that initiators push snapshots of their checkout to.
    definitions_repo: str | None = None
    identity: Path | None = None
    known_hosts: Path | None = None
    repo_aliases: list[str] = field(default_factory=list)
    # Where the controller's web dashboard is (printed by `distbuild up`).
    dashboard_url: str | None = None
    # Unknown fields in definitions are errors, not warnings (`--strict`).
    strict_definitions: bool = False


def client_settings(explicit_path: str | None, **overrides: Any) -> ClientSettings:
    """Client settings from --config / $DISTBUILD_CONFIG; non-None `overrides` win.

    Only the client keys are read from the top level: the same file may hold
    other components' sections (trove:, controller:, worker:), which check
    their own keys. Key paths in a file are relative to that file.
    """
    path = config_path(explicit_path)
    values = load(path)
    known = {f.name for f in dataclasses.fields(ClientSettings)}
    picked = {k: v for k, v in values.items() if k in known}
    settings = section(ClientSettings, picked, str(path) if path else "settings", **overrides)
    base = path.parent if path else Path.cwd()
    for name in ("identity", "known_hosts"):
        value = getattr(settings, name)
        if value is not None and not value.is_absolute() and overrides.get(name) is None:
            setattr(settings, name, base / value)
    return settings

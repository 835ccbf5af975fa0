"""Which artifact holds a system, and what runs on it at deploy time.  [core]"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from distbuild.deploy.errors import DeployError


@dataclass(frozen=True)
class SystemArtifact:
    """A built system: its name, cache key and configuration extensions."""

    morph: str
    name: str
    cache_key: str
    configuration_extensions: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        """The artifact's name in the cache: KEY.system.NAME-rootfs (a gzip tarball)."""
        return f"{self.cache_key}.system.{self.name}-rootfs"


class SystemResolver(Protocol):
    """Gives the artifact of a system morphology named in a cluster."""

    def system(self, morph: str) -> SystemArtifact:
        """The artifact for the system at `morph` (relative to the definitions)."""


@dataclass
class MorphSystems:
    """Systems read straight from their morphologies, with cache keys from `cache_key`.

    Until the definitions engine computes cache keys for deploy, whoever
    holds the key (a test, an earlier build's output) supplies it.
    """

    definitions: Path
    cache_key: Callable[[str], str]

    def system(self, morph: str) -> SystemArtifact:
        """Read `morph`'s name and configuration-extensions; ask `cache_key` for its key."""
        path = self.definitions / morph
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise DeployError("system morphology does not exist", str(path)) from None
        except yaml.YAMLError as e:
            raise DeployError(f"YAML syntax error: {e}", str(path)) from None
        if not isinstance(data, dict) or data.get("kind") != "system":
            raise DeployError("not a system morphology (kind: system)", str(path))
        exts = data.get("configuration-extensions") or []
        if not isinstance(exts, list) or not all(isinstance(e, str) for e in exts):
            raise DeployError("configuration-extensions: expected a list of names", str(path))
        return SystemArtifact(morph, str(data.get("name") or path.stem),
                              self.cache_key(morph), tuple(exts))

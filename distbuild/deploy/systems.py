"""Which artifact holds a system, and what runs on it at deploy time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from distbuild.definitions import Aliases, Definitions, Resolver, build_graph


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
class DefinitionsSystems:
    """Systems with the cache keys the definitions engine gives, as a build computed them.

    The resolver and aliases must be the ones the build used (the trove's
    git resolver, or the offline one), or the keys will not match.
    """

    defs: Definitions
    resolver: Resolver
    aliases: Aliases
    _seen: dict[str, SystemArtifact] = field(default_factory=dict, init=False, repr=False)

    def system(self, morph: str) -> SystemArtifact:
        """Compute `morph`'s build graph (once) and take its system step."""
        if morph not in self._seen:
            node = build_graph(self.defs, morph, self.resolver, self.aliases).system
            self._seen[morph] = SystemArtifact(morph, node.name, node.cache_key,
                                               tuple(node.configuration_extensions))
        return self._seen[morph]

"""Turning a (repository URL, ref) into the commit and tree a build uses.

The core only states the interface; the trove supplies the git-backed
resolver. Offline, the ref string stands in for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Resolved:
    """A ref pinned down: the commit it names and that commit's tree."""

    commit: str
    tree: str


class Resolver(Protocol):
    """Anything that can pin a ref of a repository to a commit and tree."""

    def resolve(self, repo_url: str, ref: str) -> Resolved:
        """The commit and tree `ref` names in `repo_url`; raises ResolveError if unknown."""


class OfflineResolver:
    """Does no git: the ref string stands in for the commit and the tree SHA."""

    def resolve(self, repo_url: str, ref: str) -> Resolved:
        return Resolved(commit=ref, tree=ref)

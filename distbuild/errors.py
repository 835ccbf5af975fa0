"""The one root error of distbuild.

Every error a user can cause carries what went wrong, where (a file and line,
a field, a peer) and whether trying again may help. The CLI prints it as one
line; nothing else reaches the user as a traceback.
"""

from __future__ import annotations


class DistbuildError(Exception):
    """A failure with a one-line message naming where it happened."""

    def __init__(self, what: str, where: str | None = None, *, retryable: bool = False):
        super().__init__(what)
        self.what = what
        self.where = where
        self.retryable = retryable

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what


class DefinitionsError(DistbuildError):
    """The definitions are malformed or inconsistent."""


class ConfigError(DistbuildError):
    """The configuration file or a command-line setting is wrong."""


class ResolveError(DistbuildError):
    """A repository or ref could not be resolved to a commit."""


class MissingRepository(ResolveError):
    """The repository does not exist where its URL points (as opposed to a network failure)."""


class TroveError(DistbuildError):
    """The trove, its git repositories or its artifact cache refused or failed."""

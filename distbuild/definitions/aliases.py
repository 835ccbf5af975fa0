"""Repository aliases: `upstream:X`, `baserock:X` and configured ones, resolved to URLs.

Baserock's troves keep upstream mirrors under delta/ and Baserock's own
repositories under baserock/, so those are the default aliases. A configured
alias is written as morph wrote it: `NAME=PULL-PATTERN#PUSH-PATTERN`, with
`%s` where the rest of the name goes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from distbuild.errors import ConfigError

DEFAULT_TROVE_GIT_URL = "git://127.0.0.1:9418"

# Aliases morph knew without configuration. They are only ever rewritten into
# URLs here; nothing in distbuild contacts them unless definitions name them.
BUILTIN_PATTERNS = {
    "github": "git://github.com/%s",
    "gnome": "git://git.gnome.org/%s",
    "freedesktop": "git://anongit.freedesktop.org/%s",
    "bitbucket": "https://bitbucket.org/%s",
}

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_ALIAS = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)=([^#]+)(?:#(.*))?$")


@dataclass
class Aliases:
    """Turns a chunk's `repo` into the URL the network fetches it from."""

    trove_git_url: str = DEFAULT_TROVE_GIT_URL
    patterns: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        base = self.trove_git_url.rstrip("/")
        defaults = {"upstream": f"{base}/delta/%s", "baserock": f"{base}/baserock/%s"}
        self.patterns = {**BUILTIN_PATTERNS, **defaults, **self.patterns}

    @classmethod
    def from_config(cls, trove_git_url: str | None, specs: list[str] | None) -> Aliases:
        """Aliases for a trove plus `NAME=PULL#PUSH` specs from configuration."""
        patterns = {}
        for spec in specs or []:
            match = _ALIAS.match(spec)
            if not match or "%s" not in match.group(2):
                raise ConfigError(f"repo alias '{spec}' is not NAME=PULL-PATTERN#PUSH-PATTERN "
                                  "with %s marking the repository name", "repo_aliases")
            patterns[match.group(1)] = match.group(2)
        return cls(trove_git_url or DEFAULT_TROVE_GIT_URL, patterns)

    def resolve(self, repo: str) -> str:
        """The pull URL for `repo` (alias:name, a URL, or a name on the trove)."""
        if _SCHEME.match(repo) or repo.startswith("/"):
            return repo
        prefix, sep, rest = repo.partition(":")
        if sep and prefix in self.patterns:
            return self.patterns[prefix].replace("%s", rest)
        return f"{self.trove_git_url.rstrip('/')}/{repo}"

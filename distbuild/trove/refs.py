"""Ref resolution with GitPython: (repository URL, ref) -> commit SHA and tree SHA.

Local repositories (a path or file:// URL) are read in place; anything else
goes through the mirror cache. Answers are cached briefly (branch names move)
and a full commit SHA's answer forever (it cannot change). An unknown
repository or ref is a ResolveError naming both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import git
import gitdb.exc

# The definitions engine's type: the resolver protocol it calls returns it.
from distbuild.definitions.resolve import Resolved
from distbuild.errors import DistbuildError, MissingRepository, ResolveError
from distbuild.trove.mirror import SHA_RE, MirrorCache

# Baserock's trove aliases: `upstream:X` is delta/X, `baserock:X` is baserock/X.
DEFAULT_ALIASES = {"upstream": "delta/", "baserock": "baserock/"}

__all__ = ["DEFAULT_ALIASES", "GitResolver", "Resolved", "expand_alias", "local_resolver",
           "resolve_in"]


def expand_alias(repo: str, trove_git_url: str,
                 aliases: dict[str, str] | None = None) -> str:
    """`upstream:X` -> TROVE/delta/X, `baserock:X` -> TROVE/baserock/X; URLs unchanged."""
    prefix, sep, rest = repo.partition(":")
    table = DEFAULT_ALIASES if aliases is None else aliases
    if sep and prefix in table and not rest.startswith("//"):
        base = trove_git_url.rstrip("/")
        return f"{base}/{table[prefix]}{rest}" if base else f"{table[prefix]}{rest}"
    return repo


def _local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    if "://" in url or (":" in url.split("/", 1)[0] and not url.startswith("/")):
        return None
    return Path(url)


class GitResolver:
    """Resolves refs; `resolve(repo_url, ref) -> Resolved` is the definitions engine's protocol."""

    def __init__(self, mirrors: MirrorCache | Path | None = None, ttl: float = 30.0,
                 trove_git_url: str = "",
                 sha1s: Callable[[str, str], dict | None] | None = None):
        """With `sha1s` (the trove's `GET /1.0/sha1s`, e.g. CacheClient.sha1s), refs of
        repositories under `trove_git_url` are asked of the trove, not fetched."""
        if mirrors is not None and not isinstance(mirrors, MirrorCache):
            mirrors = MirrorCache(Path(mirrors))
        self.mirrors = mirrors
        self.ttl = ttl
        self._trove = trove_git_url.rstrip("/") + "/" if trove_git_url and sha1s else ""
        self._sha1s = sha1s
        self._cache: dict[tuple[str, str], tuple[Resolved, float]] = {}

    def resolve(self, repo_url: str, ref: str) -> Resolved:
        """The commit and tree `ref` names in `repo_url`; ResolveError naming both if unknown."""
        now = time.monotonic()
        hit = self._cache.get((repo_url, ref))
        if hit is not None and (SHA_RE.fullmatch(ref) or now - hit[1] < self.ttl):
            return hit[0]
        resolved = self._resolve(repo_url, ref)
        self._cache[(repo_url, ref)] = (resolved, now)
        return resolved

    def _resolve(self, repo_url: str, ref: str) -> Resolved:
        asked = self._ask_trove(repo_url, ref)
        if asked is not None:
            return asked
        local = _local_path(repo_url)
        if local is not None:
            path = local
        elif self.mirrors is None:
            raise ResolveError(f"cannot resolve ref '{ref}': remote repositories need a "
                               "mirror cache", repo_url)
        else:
            try:
                path = self.mirrors.ensure(repo_url, ref)
            except ResolveError as e:
                raise type(e)(f"cannot resolve ref '{ref}': {e.what}", repo_url,
                              retryable=e.retryable) from None
        return resolve_in(path, ref, repo_url)

    def _ask_trove(self, repo_url: str, ref: str) -> Resolved | None:
        """The trove's answer for one of its own repositories: one HTTP round trip on a
        kept connection instead of a git fetch into a mirror (a new one: `git init` and
        a fetch), as morph asked its trove. None (use the mirror, whose errors say what
        is wrong) for any other repository, or if the trove cannot answer."""
        if not self._trove or not repo_url.startswith(self._trove):
            return None
        try:
            answer = self._sha1s(repo_url[len(self._trove):], ref)
            if answer is not None and SHA_RE.fullmatch(answer["sha1"]) \
                    and SHA_RE.fullmatch(answer["tree"]):
                return Resolved(answer["sha1"], answer["tree"])
        except (DistbuildError, KeyError, TypeError):
            pass
        return None


def local_resolver(mirror_dir: Path | None = None) -> GitResolver:
    """A resolver for client commands, as the controller's: mirrors under the user's cache."""
    from distbuild.config import user_cache_dir

    return GitResolver(MirrorCache(mirror_dir or user_cache_dir() / "mirrors"))


def resolve_in(path: Path, ref: str, shown_as: str | None = None) -> Resolved:
    """Resolve `ref` in the git repository at `path` (bare or not)."""
    where = shown_as or str(path)
    try:
        repo = git.Repo(path)
    except (git.NoSuchPathError, git.InvalidGitRepositoryError):
        raise MissingRepository(f"cannot resolve ref '{ref}': repository not found",
                                where) from None
    try:
        with repo:
            commit = repo.commit(_qualified(repo, ref))
            return Resolved(commit.hexsha, commit.tree.hexsha)
    except (git.BadName, gitdb.exc.BadName, gitdb.exc.BadObject, ValueError,
            git.GitCommandError):
        raise ResolveError(f"ref '{ref}' not found in repository", where) from None


def _qualified(repo: git.Repo, ref: str) -> str:
    # Prefer a branch over a tag of the same name, as morph did, then anything git accepts.
    if SHA_RE.fullmatch(ref) or ref.startswith("refs/"):
        return ref
    for candidate in (f"refs/heads/{ref}", f"refs/tags/{ref}"):
        if (Path(repo.git_dir) / candidate).exists() or _packed(repo, candidate):
            return candidate
    return ref


def _packed(repo: git.Repo, refname: str) -> bool:
    packed = Path(repo.git_dir) / "packed-refs"
    if not packed.exists():
        return False
    return any(line.endswith(" " + refname) for line in packed.read_text().splitlines())

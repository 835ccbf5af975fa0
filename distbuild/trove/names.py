"""Validation of the names clients send the trove: cache keys, artifact filenames, repos.

Every name that becomes part of a path on the trove passes through here first,
so that no request can name a file outside the trove's directories.
"""

from __future__ import annotations

import re

from distbuild.errors import TroveError

KEY_RE = re.compile(r"[0-9a-f]{64}")
# KEY.KIND.NAME as morph-cache-server named artifacts; the part after the key is
# one path component of bounded length.
FILENAME_RE = re.compile(r"([0-9a-f]{64})\.([A-Za-z0-9_+-][A-Za-z0-9._+-]{0,199})")
_REPO_PART_RE = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}")
MAX_REPO_NAME = 255


def check_key(key: str) -> str:
    """`key` if it is a cache key (64 lower-case hex digits); TroveError otherwise."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise TroveError("not a cache key (64 lower-case hex digits)", _shown(key))
    return key


def check_filename(filename: str) -> str:
    """`filename` if it is a valid KEY.KIND.NAME artifact filename; TroveError otherwise."""
    if (not isinstance(filename, str) or not FILENAME_RE.fullmatch(filename)
            or ".." in filename or filename.endswith(".")):
        raise TroveError("not a valid artifact filename (KEY.KIND.NAME)", _shown(filename))
    return filename


def key_of(filename: str) -> str:
    """The cache key at the start of a valid artifact filename."""
    return check_filename(filename)[:64]


def check_repo_name(name: str) -> str:
    """A repository name (slashes allowed) without a trailing .git; TroveError if unsafe."""
    if not isinstance(name, str):
        raise TroveError("repository name must be a string", _shown(name))
    stripped = name.strip("/")
    if stripped.endswith(".git"):
        stripped = stripped[:-4]
    parts = stripped.split("/")
    # No part may end in .git: a repository must never be created inside another.
    if (not stripped or len(stripped) > MAX_REPO_NAME
            or not all(_REPO_PART_RE.fullmatch(p) and ".." not in p and not p.endswith(".git")
                       for p in parts)):
        raise TroveError("invalid repository name (letters, digits, '._+-' and '/' "
                         "between parts; no '..')", _shown(name))
    return stripped


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

"""Upload credentials: HMAC tokens bound to one subject and an expiry.

The controller and the trove share a secret. The controller issues a token for
the cache key a worker is about to build; the trove accepts an upload for that
key only with a token that verifies. The subject is not carried in the token:
the verifier names it (the key in the URL), so a token for one key is useless
for any other. Pure standard library so the controller can issue tokens
without importing any network code.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from distbuild.errors import DistbuildError

_DOMAIN = b"distbuild-token-v1"
# Bounds a token a client sends us so a huge header cannot cost much work.
MAX_TOKEN_LENGTH = 200


class TokenError(DistbuildError):
    """A token is missing, malformed, forged or expired."""


def new_secret() -> str:
    """A fresh random secret suitable for a token secret file."""
    return secrets.token_hex(32)


def write_secret(path: Path) -> None:
    """Create a new secret file readable only by its owner (mode 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_secret() + "\n")


def read_secret(path: Path) -> bytes:
    """The secret in `path` (surrounding whitespace ignored); clear error if absent or empty."""
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        raise TokenError("token secret file does not exist", str(path)) from None
    except OSError as e:
        raise TokenError(f"cannot read token secret file: {e.strerror}", str(path)) from None
    if len(text) < 16:
        raise TokenError("token secret is empty or shorter than 16 characters", str(path))
    return text.encode()


def stored_subject(key: str) -> str:
    """What the artifact cache's receipt for source `key` is issued for: its word that it
    holds every artifact of `key`, which an upload token (issued for `key`) is not."""
    return f"stored:{key}"


def _mac(secret: bytes, subject: str, expires: int) -> str:
    message = b"\n".join([_DOMAIN, subject.encode(), str(expires).encode()])
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def issue(secret: bytes, subject: str, ttl: float = 3600, now: float | None = None) -> str:
    """A token for `subject` (usually a cache key) valid for `ttl` seconds."""
    expires = int((time.time() if now is None else now) + ttl)
    return f"{expires}.{_mac(secret, subject, expires)}"


def verify(secret: bytes, subject: str, token: str, now: float | None = None) -> None:
    """Return if `token` is valid for `subject` now; raise TokenError saying why not."""
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise TokenError("malformed token", subject)
    expires_text, mac = token.split(".")
    if not expires_text.isdigit():
        raise TokenError("malformed token", subject)
    expires = int(expires_text)
    if not hmac.compare_digest(mac, _mac(secret, subject, expires)):
        raise TokenError("token was not issued for this key", subject)
    if (time.time() if now is None else now) > expires:
        raise TokenError("token has expired", subject)

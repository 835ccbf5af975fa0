"""Fetching a system artifact from the artifact cache (morph-cache-server's API).  [edge]"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from distbuild.deploy.errors import DeployError, NotBuiltError

_CHUNK = 1 << 20
_TIMEOUT = 60


def artifact_url(artifact_cache_url: str, filename: str) -> str:
    """The cache's URL for artifact `filename` (KEY.KIND.NAME)."""
    base = artifact_cache_url.rstrip("/")
    return f"{base}/1.0/artifacts?{urllib.parse.urlencode({'filename': filename})}"


def fetch_system_artifact(artifact_cache_url: str, filename: str, dest: Path,
                          system_morph: str | None = None) -> Path:
    """Stream artifact `filename` from the cache into `dest`, which appears only when complete.

    A 404 means the system was never built: deploying never builds, so the
    error says which system and how to build it.
    """
    url = artifact_url(artifact_cache_url, filename)
    partial = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as response, \
                open(partial, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
    except urllib.error.HTTPError as e:
        _remove(partial)
        if e.code == 404:
            raise _not_built(filename, system_morph) from None
        raise DeployError(f"artifact cache answered {e.code} {e.reason} for {filename}",
                          artifact_cache_url, retryable=e.code >= 500) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        _remove(partial)
        reason = getattr(e, "reason", None) or e
        raise DeployError(f"cannot fetch {filename} from the artifact cache: {reason}",
                          artifact_cache_url, retryable=True) from None
    os.replace(partial, dest)
    return dest


def _not_built(filename: str, system_morph: str | None) -> NotBuiltError:
    key, _, rest = filename.partition(".system.")
    name = rest.removesuffix("-rootfs") or filename
    morph = system_morph or f"systems/{name}.morph"
    return NotBuiltError(
        f"system {name} (cache key {key}) is not built; build it with "
        f"`distbuild --controller-initiator-address=HOST {morph}`, then deploy again")


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass

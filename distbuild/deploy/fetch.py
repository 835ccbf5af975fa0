"""Fetching a system artifact from the trove's artifact cache.  [edge]

The trove's blocking cache client does the transfer (streamed, checked
against the sha256 the trove recorded, renamed into place only when whole);
this module turns its answers into what a deploying user needs to hear.
"""

from __future__ import annotations

from pathlib import Path

from distbuild.deploy.errors import DeployError, NotBuiltError
from distbuild.errors import DistbuildError
from distbuild.trove.client import CacheClient, CacheClientError


def fetch_system_artifact(artifact_cache_url: str, filename: str, dest: Path,
                          system_morph: str | None = None) -> Path:
    """Download artifact `filename` (KEY.system.NAME-rootfs) into `dest`, whole or not at all.

    A 404 means the system was never built: deploying never builds, so the
    error says which system and how to build it.
    """
    try:
        CacheClient(artifact_cache_url).download(filename, dest)
    except CacheClientError as e:
        if e.status == 404:
            raise _not_built(filename, system_morph) from None
        raise DeployError(f"cannot fetch {filename}: {e.what}", artifact_cache_url,
                          retryable=e.retryable) from None
    except DistbuildError as e:
        raise DeployError(f"cannot fetch {filename}: {e}", artifact_cache_url) from None
    return dest


def _not_built(filename: str, system_morph: str | None) -> NotBuiltError:
    key, _, rest = filename.partition(".system.")
    name = rest.removesuffix("-rootfs") or filename
    morph = system_morph or f"systems/{name}.morph"
    return NotBuiltError(
        f"system {name} (cache key {key}) is not built; build it with "
        f"`distbuild --controller-initiator-address=HOST {morph}`, then deploy again")

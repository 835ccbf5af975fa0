"""The worker's side of the trove's artifact cache: downloading dependencies, uploading results.

The step machinery knows no network; the worker service and `distbuild
build-step` plug these into it.
"""

from __future__ import annotations

from pathlib import Path

from distbuild.trove.client import CacheClient, CacheClientError
from distbuild.worker.artifacts import ArtifactInfo
from distbuild.worker.errors import MissingArtifact
from distbuild.worker.step import StepResult


class TroveArtifactSource:
    """Downloads artifacts from the trove's cache; the client checks size and sha256."""

    def __init__(self, client: CacheClient) -> None:
        self.client = client
        self._sources: dict[str, dict[str, ArtifactInfo]] = {}

    def download(self, filename: str, dest: Path) -> str | None:
        """Fetch `filename` into `dest`; returns the sha256 the trove recorded and checked."""
        try:
            return self.client.download(filename, dest).sha256
        except CacheClientError as e:
            if e.status == 404:
                raise MissingArtifact(f"artifact {filename} is not in the artifact cache",
                                      self.client.base_url) from None
            raise

    def info(self, filename: str) -> ArtifactInfo | None:
        """The sha256 and size the trove recorded for `filename` (one query per source)."""
        key = filename[:64]
        if key not in self._sources:
            meta = self.client.source_meta(key) or {"artifacts": []}
            self._sources[key] = {
                a["filename"]: ArtifactInfo(a["filename"], a["sha256"], int(a["size"]))
                for a in meta.get("artifacts", [])}
        return self._sources[key].get(filename)


def upload(result: StepResult, client: CacheClient, token: str) -> bool:
    """Upload a step's artifacts, metadata and log as one source; False if already cached."""
    files = [*result.artifacts, result.meta]
    return client.upload_source(
        result.cache_key, {a.filename: a.path for a in files}, token, log=result.log.path,
        sha256s={a.filename: a.sha256 for a in files})


def upload_size(result: StepResult) -> int:
    """Bytes `upload` sends: every file of the source and its log (reported to the controller)."""
    files = [*result.artifacts, result.meta]
    return sum(a.size for a in files) + result.log.size

"""The worker's side of the trove's artifact cache: downloading dependencies, uploading results.

The step machinery knows no network; the worker service and `distbuild
build-step` plug these into it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from distbuild.trove.client import CacheClient, CacheClientError, Stored
from distbuild.worker.artifacts import ArtifactInfo, artifact_filename
from distbuild.worker.cache import LocalArtifactCache
from distbuild.worker.chunk import staged_chunks
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
            self._remember(key, self.client.source_meta(key))
        return self._sources[key].get(filename)

    def ask_records(self, keys: Iterable[str]) -> None:
        """Ask for the records of sources `keys` in one round trip, for `info` to answer from.

        Sources the trove does not hold (yet) are left for `info` to ask again.
        """
        wanted = sorted({k for k in keys if k not in self._sources})
        if len(wanted) < 2:
            return  # `info` asks for one as cheaply
        try:
            metas = self.client.source_metas(wanted)  # None: a trove without the query
        except CacheClientError:
            return  # `info` asks again, source by source, and says what is wrong
        for key, meta in (metas or {}).items():
            if key in wanted and meta is not None:
                self._remember(key, meta)

    def _remember(self, key: str, meta: dict | None) -> None:
        self._sources[key] = {
            a["filename"]: ArtifactInfo(a["filename"], a["sha256"], int(a["size"]))
            for a in (meta or {}).get("artifacts", [])}


def records_in_one_query(source: TroveArtifactSource, cache: LocalArtifactCache, node: Any,
                     nodes: Mapping[str, Any]) -> None:
    """Ask the trove at once about every source a chunk stages that this worker has no
    record of (whether an artifact is empty is otherwise one query per source)."""
    if node.kind != "chunk":
        return
    source.ask_records(dep.cache_key for dep in staged_chunks(node, nodes)
                    if any(cache.recorded_sha256(artifact_filename(dep.cache_key, "chunk",
                                                                   rule.artifact)) is None
                           for rule in dep.split_rules))


def upload(result: StepResult, client: CacheClient, token: str) -> Stored:
    """Upload a step's artifacts, metadata and log as one source; the trove's answer."""
    files = [*result.artifacts, result.meta]
    return client.store_source(
        result.cache_key, {a.filename: a.path for a in files}, token, log=result.log.path,
        sha256s={a.filename: a.sha256 for a in files}, log_sha256=result.log.sha256)


def upload_size(result: StepResult) -> int:
    """Bytes `upload` sends: every file of the source and its log (reported to the controller)."""
    files = [*result.artifacts, result.meta]
    return sum(a.size for a in files) + result.log.size

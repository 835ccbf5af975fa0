"""The worker's side of the trove: downloading dependencies, uploading results, running a job.

This is the seam between the step machinery (which knows no network) and the
worker service that talks to a controller: `run_job` takes exactly what a
`job-run` message carries and returns what `job-finished` reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distbuild.definitions import node_from_dict
from distbuild.runprocess import CancelToken
from distbuild.trove.client import CacheClient, CacheClientError
from distbuild.worker.errors import MissingArtifact
from distbuild.worker.log import LogCallback
from distbuild.worker.step import StepResult, StepRunner


class TroveArtifactSource:
    """Downloads artifacts from the trove's cache; the client checks size and sha256."""

    def __init__(self, client: CacheClient) -> None:
        self.client = client

    def download(self, filename: str, dest: Path) -> str | None:
        """Fetch `filename` into `dest`; returns the sha256 the trove recorded and checked."""
        try:
            return self.client.download(filename, dest).sha256
        except CacheClientError as e:
            if e.status == 404:
                raise MissingArtifact(f"artifact {filename} is not in the artifact cache",
                                      self.client.base_url) from None
            raise


def upload(result: StepResult, client: CacheClient, token: str) -> bool:
    """Upload a step's artifacts, metadata and log as one source; False if already cached."""
    files = [*result.artifacts, result.meta]
    return client.upload_source(
        result.cache_key, {a.filename: a.path for a in files}, token, log=result.log.path,
        sha256s={a.filename: a.sha256 for a in files})


def run_job(runner: StepRunner, step: Mapping[str, Any], closure: Sequence[Mapping[str, Any]],
            client: CacheClient, token: str, *, on_line: LogCallback | None = None,
            cancel: CancelToken | None = None) -> dict[str, Any]:
    """Build the node in a job-run message and upload it; returns the job-finished artifacts.

    The answer maps each uploaded file name to its sha256 and size. Errors
    are those of StepRunner.run, plus CacheClientError if the upload fails.
    """
    node = node_from_dict(dict(step))
    nodes = {n.id: n for n in (node_from_dict(dict(d)) for d in closure)}
    nodes[node.id] = node
    result = runner.run(node, nodes, on_line=on_line, cancel=cancel)
    upload(result, client, token)
    return {a.filename: {"sha256": a.sha256, "size": a.size}
            for a in [*result.artifacts, result.meta]}

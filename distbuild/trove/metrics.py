"""The trove's Prometheus metrics, served at GET /metrics on its HTTP port.

Counters are kept by the HTTP layer as it serves (uploads, downloads,
refusals) and by the garbage collector; what is stored is read from the
store at each scrape. One CollectorRegistry per trove, not the global one.
docs/metrics.md lists every metric.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily

from distbuild.trove.store import Store

disable_created_metrics()

# Why a request was refused, by its HTTP status.
REASONS = {400: "bad_request", 401: "no_token", 403: "forbidden", 404: "not_found",
           409: "conflict", 411: "no_length", 413: "too_large", 507: "no_space"}


class _Stored:
    """Sources, artifacts and bytes in the store, read at each scrape."""

    def __init__(self, store: Store):
        self.store = store
        self._artifacts: dict[str, int] = {}  # key -> artifacts of that source

    def collect(self):
        keys = set(self.store.keys())
        for key in list(self._artifacts):
            if key not in keys:
                del self._artifacts[key]
        for key in keys - set(self._artifacts):
            meta = self.store.meta(key) or {}
            self._artifacts[key] = len(meta.get("artifacts", []))
        stored = GaugeMetricFamily("distbuild_trove_stored_bytes",
                                   "Bytes of every source held in the artifact cache")
        stored.add_metric([], self.store.total_size())
        yield stored
        sources = GaugeMetricFamily("distbuild_trove_stored_sources",
                                    "Sources (built steps) held in the artifact cache")
        sources.add_metric([], len(keys))
        yield sources
        artifacts = GaugeMetricFamily("distbuild_trove_stored_artifacts",
                                      "Artifacts held in the artifact cache")
        artifacts.add_metric([], sum(self._artifacts.values()))
        yield artifacts


class TroveMetrics:
    """The trove's counters, and its registry."""

    def __init__(self, store: Store):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.uploads = Counter("distbuild_trove_uploads", "Uploads of a source received whole, "
                               "by whether it was new", ["result"], registry=r)
        self.upload_bytes = Counter("distbuild_trove_upload_bytes",
                                    "Bytes of the uploads received whole", registry=r)
        self.downloads = Counter("distbuild_trove_downloads",
                                 "Downloads started, by what was fetched", ["kind"], registry=r)
        self.download_bytes = Counter("distbuild_trove_download_bytes",
                                      "Bytes of the downloads started", ["kind"], registry=r)
        self.refusals = Counter("distbuild_trove_refusals", "Requests refused, by reason",
                                ["reason"], registry=r)
        self.gc_passes = Counter("distbuild_trove_gc_passes",
                                 "Garbage collection passes, by result", ["result"],
                                 registry=r)
        self.gc_removed = Counter("distbuild_trove_gc_removed_sources",
                                  "Sources garbage collection removed", registry=r)
        for result in ("stored", "already_cached"):
            self.uploads.labels(result)
        for kind in ("artifact", "log"):
            self.downloads.labels(kind)
            self.download_bytes.labels(kind)
        for result in ("ok", "failed"):
            self.gc_passes.labels(result)
        r.register(_Stored(store))

    def uploaded(self, stored: bool, size: int) -> None:
        self.uploads.labels("stored" if stored else "already_cached").inc()
        self.upload_bytes.inc(size)

    def downloaded(self, kind: str, size: int) -> None:
        self.downloads.labels(kind).inc()
        self.download_bytes.labels(kind).inc(size)

    def refused(self, status: int) -> None:
        self.refusals.labels(REASONS.get(status, f"http_{status}")).inc()

    def collected(self, removed: int | None) -> None:
        """A garbage collection pass: how many sources it removed, None if it failed."""
        self.gc_passes.labels("failed" if removed is None else "ok").inc()
        self.gc_removed.inc(removed or 0)

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

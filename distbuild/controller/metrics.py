"""The controller's Prometheus metrics, served at /metrics on the dashboard's port.

Counters and histograms are fed by watching the scheduler's events and the
workers' reports (see observers.py); gauges (workers, slots, steps by state,
queue length) are read from the scheduler when scraped, so they are never
stale. Each controller has its own CollectorRegistry: tests that run several
in one process do not share counts. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily

from distbuild.controller.observers import Observer
from distbuild.protocol import messages as m
from distbuild.scheduling import (
    JobStarted,
    RequestPlanned,
    State,
    StepBuilt,
    StepQueued,
    StepRequeued,
)

if TYPE_CHECKING:
    from distbuild.controller.core import Controller

# The *_created series double every counter's lines and say nothing a scrape needs.
disable_created_metrics()

# Steps take from under a second (a small stratum) to hours (a toolchain).
STEP_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
DISPATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                    300, 900, 3600)
# Why an attempt ran again, by what became of the one before (StepRequeued.outcome).
RERUN_REASONS = {"lost": "worker_lost", "handed-back": "drained"}


class _FarmGauges:
    """Gauges computed from the scheduler at each scrape."""

    def __init__(self, ctl: Controller):
        self.ctl = ctl

    def collect(self):
        sched = self.ctl.scheduler
        connected = GaugeMetricFamily("distbuild_workers_connected",
                                      "Workers with a link to the controller now")
        connected.add_metric([], len(self.ctl.workers))
        yield connected
        slots = GaugeMetricFamily("distbuild_worker_slots",
                                  "Step slots of workers that take work, by arch",
                                  labels=["arch"])
        busy = GaugeMetricFamily("distbuild_worker_slots_busy",
                                 "Step slots running a step now, by arch", labels=["arch"])
        total: Counter[str] = Counter()
        used: Counter[str] = Counter()
        for worker in sched.workers.values():
            if worker.name in self.ctl.workers and not worker.away:
                total[worker.arch] += 0 if worker.draining else worker.slots
                used[worker.arch] += len(worker.jobs)
        for arch in sorted(set(total) | set(used)):
            slots.add_metric([arch], total[arch])
            busy.add_metric([arch], used[arch])
        yield slots
        yield busy
        steps = GaugeMetricFamily("distbuild_steps",
                                  "Steps that an active request needs, by state",
                                  labels=["state"])
        states = Counter(w.state.value for w in sched.work.values() if w.requests)
        for state in State:
            steps.add_metric([state.value], states[state.value])
        yield steps
        queue = GaugeMetricFamily("distbuild_queue_length",
                                  "Ready steps waiting for a worker slot")
        queue.add_metric([], states[State.READY.value])
        yield queue


class ControllerMetrics(Observer):
    """The controller's metrics and the observer that keeps them."""

    def __init__(self, ctl: Controller):
        self.ctl = ctl
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.step_seconds = Histogram(
            "distbuild_step_duration_seconds", "Time a built step took on its worker, by kind",
            ["kind"], buckets=STEP_BUCKETS, registry=r)
        self.dispatch_seconds = Histogram(
            "distbuild_dispatch_latency_seconds",
            "Time from a step becoming ready to its job being sent to a worker",
            buckets=DISPATCH_BUCKETS, registry=r)
        self.cache_hits = PromCounter(
            "distbuild_cache_hits", "Steps of planned requests found in the artifact cache",
            registry=r)
        self.cache_misses = PromCounter(
            "distbuild_cache_misses", "Steps of planned requests the artifact cache lacked",
            registry=r)
        self.sent_bytes = PromCounter(
            "distbuild_cache_sent_bytes", "Bytes workers uploaded to the cache: artifacts, "
            "metadata and logs of built steps (as they report them)", registry=r)
        self.fetched_bytes = PromCounter(
            "distbuild_cache_fetched_bytes", "Artifact bytes workers downloaded from the cache "
            "to stage steps (as they report them)", registry=r)
        self.requests = PromCounter(
            "distbuild_requests", "Build requests that ended, by outcome", ["outcome"],
            registry=r)
        self.reruns = PromCounter(
            "distbuild_attempts_rerun", "Step attempts run again, by why the previous one "
            "ended", ["reason"], registry=r)
        self.verifications = PromCounter(
            "distbuild_verifications", "Reproducibility checks that ended, by outcome (match, "
            "mismatch: the rebuilt artifacts differ, failed: the step could not be rebuilt)",
            ["outcome"], registry=r)
        self.steps_built = PromCounter(
            "distbuild_steps_built", "Steps built (confirmed in the cache), by kind", ["kind"],
            registry=r)
        for outcome in ("finished", "failed", "cancelled"):
            self.requests.labels(outcome)
        for outcome in ("match", "mismatch", "failed"):
            self.verifications.labels(outcome)
        for reason in RERUN_REASONS.values():
            self.reruns.labels(reason)
        for kind in ("chunk", "stratum", "system"):
            self.step_seconds.labels(kind)
            self.steps_built.labels(kind)
        r.register(_FarmGauges(ctl))
        self._ready_at: dict[str, float] = {}
        self._handlers = {
            RequestPlanned: self._planned,
            StepQueued: self._ready,
            StepRequeued: self._requeued,
            JobStarted: self._started,
            StepBuilt: self._built,
        }

    # -- Observer --------------------------------------------------------------------------

    def event(self, event: Any) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def request_ended(self, request_id: str, state: str) -> None:
        self.requests.labels(state).inc()

    def verification_ended(self, row: dict[str, Any]) -> None:
        self.verifications.labels(row["state"]).inc()

    # -- what each event counts ------------------------------------------------------------

    def _planned(self, e: RequestPlanned) -> None:
        plan = self.ctl.plans.get(e.request_id)
        if plan is None:
            return
        hits = sum(1 for n in plan.graph.nodes.values() if n.cache_key in plan.cached)
        self.cache_hits.inc(hits)
        self.cache_misses.inc(len(plan.graph.nodes) - hits)

    def _ready(self, e: StepQueued) -> None:
        self._ready_at.setdefault(e.key, time.monotonic())

    def _requeued(self, e: StepRequeued) -> None:
        self.reruns.labels(RERUN_REASONS.get(e.outcome, e.outcome)).inc()
        self._ready_at[e.key] = time.monotonic()

    def _started(self, e: JobStarted) -> None:
        since = self._ready_at.pop(e.key, None)
        if since is not None:
            self.dispatch_seconds.observe(time.monotonic() - since)

    def _built(self, e: StepBuilt) -> None:
        kind = next(iter(e.requests.values()), "chunk:").split(":", 1)[0]
        self.steps_built.labels(kind).inc()
        result = self.ctl.job_results.get(e.key)
        if isinstance(result, m.JobFinished):
            self.step_seconds.labels(kind).observe(result.seconds)
            self.sent_bytes.inc(max(0, result.sent_bytes))
            self.fetched_bytes.inc(max(0, result.fetched_bytes))

"""Prefetch hints: a chunk artifact just built goes to the workers likely to stage it next.

A step that stages 200 chunk artifacts, half of them built elsewhere, would
otherwise download and unpack them all while it runs (first use). Once the
cache confirms a chunk step (StepBuilt), its artifacts are offered with
`artifact-prefetch` to other workers of its arch that said they take it
(`worker-ready.prefetch`), when a request that built it still has steps to
build: each worker fetches them in the background while its own steps run
(distbuild.worker.prefetch decides whether there is room). A hint is only a
hint: nothing here waits for it or depends on it being followed.

At most MAX_WORKERS workers are told of each artifact, those with the most
free slots first (an idle worker takes the next ready step), so the trove
serves each artifact a bounded number of times more than it did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distbuild.controller.observers import Observer
from distbuild.protocol import messages as m
from distbuild.scheduling import StepBuilt

if TYPE_CHECKING:
    from distbuild.controller.core import Controller

MAX_WORKERS = 8


class Prefetcher(Observer):
    """Watches for built chunk steps; tells prefetching workers of their artifacts."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.capable: set[str] = set()  # names of connected workers that take prefetch hints

    def message(self, link: Any, message: Any) -> None:
        """Note whether a worker that announced itself takes hints."""
        if isinstance(message, m.WorkerReady):
            name = link.hello.name
            if message.prefetch:
                self.capable.add(name)
            else:
                self.capable.discard(name)

    def link_closed(self, link: Any) -> None:
        """A worker that went away takes no hints until it is ready again."""
        if link.role == "worker" and self.ctl.workers.get(link.hello.name) in (None, link):
            self.capable.discard(link.hello.name)

    def event(self, event: Any) -> None:
        """On a built chunk step that a running request still builds past, send hints."""
        if not isinstance(event, StepBuilt) or not self.capable:
            return
        result = self.ctl.job_results.get(event.key)
        if not isinstance(result, m.JobFinished):
            return
        node = self._node(event)
        if node is None or node.kind != "chunk":
            return
        if all(built >= needed for built, needed in event.progress.values()):
            return  # every request it was built for is done with it
        artifacts = {name: info for name, info in result.artifacts.items()
                     if ".chunk." in name}
        if not artifacts:
            return
        hint = m.ArtifactPrefetch(artifact_cache_url=self.ctl.settings.artifact_cache_url,
                                  artifacts=artifacts)
        for name in self.targets(node.arch, exclude=event.worker):
            self.ctl.workers[name].send(hint)

    def targets(self, arch: str, exclude: str) -> list[str]:
        """Up to MAX_WORKERS connected, prefetching workers of `arch`, most free slots first."""
        candidates = []
        for name in self.capable:
            worker = self.ctl.scheduler.workers.get(name)
            if (name == exclude or name not in self.ctl.workers or worker is None
                    or worker.arch != arch or worker.away):
                continue
            candidates.append((-worker.free, name))
        return [name for _, name in sorted(candidates)[:MAX_WORKERS]]

    def _node(self, event: StepBuilt) -> Any:
        for rid, nid in event.requests.items():
            plan = self.ctl.plans.get(rid)
            if plan is not None and nid in plan.graph.nodes:
                return plan.graph.nodes[nid]
        return None

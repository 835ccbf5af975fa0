"""`distbuild controller`: the Twisted service that runs a distbuild network's builds.

For each request it reads the definitions commit from the trove, computes the
graph, asks the cache once which steps exist, and lets the scheduler hand the
rest to workers. Blocking work (git, the cache's HTTP API) runs in threads;
every decision is made on the reactor thread by the pure Scheduler.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distbuild import config, tokens
from distbuild.controller.state import ControllerState
from distbuild.definitions import (
    Aliases,
    BuildGraph,
    Definitions,
    GitSource,
    build_graph,
    node_to_dict,
)
from distbuild.errors import ConfigError, DistbuildError
from distbuild.lognames import log_names
from distbuild.protocol import messages as m
from distbuild.scheduling import (
    JobCancelled,
    JobStarted,
    RequestCancelled,
    RequestFailed,
    RequestFinished,
    RequestPlanned,
    Scheduler,
    StepBuilt,
    StepFailed,
    StepJoined,
    StepQueued,
    StepRequeued,
    steps_from_graph,
)
from distbuild.timestamps import service_logger

TOKEN_TTL = 24 * 3600.0
# Output of a running job kept for requests that join it later (bounded: logs can be huge).
REPLAY_LINES = 10_000


@dataclass
class ControllerSettings:
    """The `controller:` section of the configuration file."""

    state_dir: Path
    trove_git_url: str
    artifact_cache_url: str
    token_secret_file: Path
    host_key: Path
    initiator_authorized_keys: Path
    worker_authorized_keys: Path
    listen_address: str = "127.0.0.1"
    initiator_port: int = 7878
    worker_port: int = 3434
    # Worker names allowed to join; empty admits any worker whose key is authorized.
    allowed_workers: list[str] = field(default_factory=list)
    repo_aliases: list[str] = field(default_factory=list)
    retry_limit: int = 2
    dead_after: float = 8.0
    name: str = "controller"
    # Unknown fields in definitions fail a request instead of warning.
    strict_definitions: bool = False


@dataclass
class Plan:
    graph: BuildGraph
    targets: list[str]
    cached: set[str]
    warnings: list[str] = field(default_factory=list)


class Controller:
    """Message handling and event application; owns the scheduler and the state."""

    def __init__(self, settings: ControllerSettings, reactor, log=None):
        from distbuild.trove.client import CacheClient
        from distbuild.trove.mirror import MirrorCache
        from distbuild.trove.refs import GitResolver

        self.settings = settings
        self.reactor = reactor
        self.name = settings.name
        self.log = log or _log
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = ControllerState(settings.state_dir / "controller.db")
        self.secret = tokens.read_secret(settings.token_secret_file)
        self.scheduler = Scheduler(settings.retry_limit)
        self.cache = CacheClient(settings.artifact_cache_url)
        self.mirrors = MirrorCache(settings.state_dir / "mirrors")
        self.resolver = GitResolver(self.mirrors)
        self.aliases = Aliases.from_config(settings.trove_git_url, settings.repo_aliases)
        self.workers: dict[str, Any] = {}  # name -> link
        self.watchers: dict[str, set[Any]] = {}  # request id -> initiator links
        self.owners: dict[str, Any] = {}  # request id -> the link whose loss cancels it
        self.plans: dict[str, Plan] = {}
        self.lognames: dict[str, dict[str, str]] = {}
        self.job_results: dict[str, m.Message] = {}  # cache key -> last JobFinished/JobFailed
        self.job_output: dict[str, deque[str]] = {}  # running job -> its recent log lines

    # -- links ---------------------------------------------------------------------------

    def link_opened(self, link) -> str | None:
        hello = link.hello
        if link.role == "worker":
            allowed = self.settings.allowed_workers
            if allowed and hello.name not in allowed:
                return f"worker name '{hello.name}' is not in this controller's allowed_workers"
            if hello.name in self.workers:
                return f"a worker named '{hello.name}' is already connected"
            self.workers[hello.name] = link
        self.log(f"{link.peer} connected ({hello.software or 'unknown software'})")
        return None

    def link_closed(self, link, reason: str) -> None:
        self.log(f"{link.peer} disconnected: {reason}")
        if link.role == "worker":
            if self.workers.get(link.hello.name) is link:
                del self.workers[link.hello.name]
                self.apply(self.scheduler.remove_worker(link.hello.name,
                                                        f"worker {link.hello.name} was lost"))
            return
        for watchers in self.watchers.values():
            watchers.discard(link)
        for rid, owner in list(self.owners.items()):
            if owner is link:
                self.log(f"request {rid}: its initiator went away; cancelling")
                self.cancel(rid)

    def message_received(self, link, message: m.Message) -> None:
        handler = getattr(self, f"_on_{type(message).__name__}", None)
        if handler is None or message.link not in (link.role, "any"):
            raise DistbuildError(f"{message.type} is not a message a {link.role} may send",
                                 link.peer)
        handler(link, message)

    # -- worker messages -------------------------------------------------------------------

    def _on_WorkerReady(self, link, msg: m.WorkerReady) -> None:
        self.log(f"{link.peer}: arch {msg.arch}, {msg.slots} slot(s)")
        self.apply(self.scheduler.add_worker(link.hello.name, msg.arch, msg.slots))

    def _on_JobOutput(self, link, msg: m.JobOutput) -> None:
        if msg.job in self.job_output:
            self.job_output[msg.job].extend(msg.lines)
        for rid, nid in self.scheduler.job_requests(msg.job).items():
            self.tell(rid, m.StepOutput(request_id=rid, step=nid, lines=msg.lines))

    def _on_JobFinished(self, link, msg: m.JobFinished) -> None:
        key = self.scheduler.jobs.get(msg.job)
        if key is None:
            return
        self.job_results[key] = msg
        # The worker is free at once; the step counts as built only once the cache,
        # which took the upload only with a valid token, confirms it.
        self.apply(self.scheduler.release_slot(msg.job))
        d = self._in_thread(self.cache.cached_sources, [key])

        def checked(answer: dict[str, bool]) -> None:
            if answer.get(key):
                self.job_output.pop(msg.job, None)
                self.state.attempt_ended(msg.job, "built", worker_seconds=msg.seconds,
                                         command_seconds=msg.command_seconds)
                self.apply(self.scheduler.job_finished(msg.job))
            else:
                self._job_failed(msg.job, "the worker reported success but the artifact cache "
                                 "does not hold the step's artifacts")

        d.addCallbacks(checked, lambda f: self._job_failed(
            msg.job, f"could not confirm the artifacts: {f.getErrorMessage()}"))

    def _on_JobFailed(self, link, msg: m.JobFailed) -> None:
        key = self.scheduler.jobs.get(msg.job)
        if key is None:
            return  # cancelled by us; nothing waits for it
        self.job_results[key] = msg
        self._job_failed(msg.job, msg.reason)

    def _job_failed(self, job: str, reason: str) -> None:
        self.job_output.pop(job, None)
        self.state.attempt_ended(job, "failed", reason)
        self.apply(self.scheduler.job_failed(job, reason))

    # -- initiator messages ----------------------------------------------------------------

    def _on_BuildRequest(self, link, msg: m.BuildRequest) -> None:
        rid = uuid.uuid4().hex[:12]
        self.state.add_request(rid, self.state.next_seq(), msg.system, msg.definitions_repo,
                               msg.definitions_commit, msg.components, link.peer)
        self.watchers[rid] = {link}
        if not msg.detach:
            self.owners[rid] = link
        link.send(m.RequestAccepted(request_id=rid))
        link.send(m.GraphingStarted(request_id=rid))
        self.log(f"request {rid}: {msg.system} at {msg.definitions_commit[:12]} "
                 f"from {link.peer}")
        d = self._in_thread(self._plan, rid, msg)
        d.addCallbacks(lambda plan: self._planned(rid, plan),
                       lambda failure: self._plan_failed(rid, failure))

    def _plan(self, rid: str, msg: m.BuildRequest) -> Plan:
        """Runs in a thread: definitions from the trove, the graph, one cache query, a pin."""
        repo = self.aliases.resolve(msg.definitions_repo)
        trove = self.settings.trove_git_url.rstrip("/") + "/"
        if not repo.startswith(trove) or "/../" in repo[len(trove) - 1:]:
            # The controller reads only the network's trove: an initiator cannot make it
            # fetch from elsewhere (another host, or a path on the controller itself).
            raise DistbuildError(f"definitions must come from this network's trove "
                                 f"({trove}), not {repo}", "build-request")
        path = self.mirrors.ensure(repo, msg.definitions_commit)
        defs = Definitions(GitSource(path, msg.definitions_commit),
                           strict=msg.strict or self.settings.strict_definitions)
        graph = build_graph(defs, msg.system, self.resolver, self.aliases)
        targets = components(graph, msg.components) if msg.components else [graph.system.id]
        keys = sorted({n.cache_key for n in graph.nodes.values()})
        # Garbage collection must not remove what this build stages from, until it ends.
        self.cache.pin(pin_name(rid), keys, tokens.issue(self.secret, f"pin:{pin_name(rid)}"),
                       ttl=TOKEN_TTL)
        answer = self.cache.cached_sources(keys)
        return Plan(graph, targets, {k for k, present in answer.items() if present},
                    defs.warnings)

    def _planned(self, rid: str, plan: Plan) -> None:
        if rid not in self.watchers:
            self._unpin(rid)  # cancelled while graphing, after its pin was made
            return
        graph = plan.graph
        self.plans[rid] = plan
        self.lognames[rid] = log_names(graph.order)
        self.state.planned(rid, [(n.id, n.cache_key, "built" if n.cache_key in plan.cached
                                  else "waiting") for n in graph.nodes.values()],
                           len(graph.nodes), 0)
        self.apply(self.scheduler.add_request(rid, steps_from_graph(graph), plan.targets,
                                              plan.cached))

    def _plan_failed(self, rid: str, failure) -> None:
        error = failure.value
        reason = str(error) if isinstance(error, DistbuildError) else (
            f"internal error while computing the build graph: {failure.getErrorMessage()}")
        if not isinstance(error, DistbuildError):
            self.log(f"request {rid}: {failure.getTraceback()}")
        self._end(rid, "failed", m.BuildFailed(request_id=rid, reason=reason), reason)

    def _on_CancelRequest(self, link, msg: m.CancelRequest) -> None:
        watching = link in self.watchers.get(msg.request_id, ())
        if not self.cancel(msg.request_id):
            link.send(m.Error(message=f"no running request {msg.request_id}",
                              request_id=msg.request_id))
        elif not watching:
            # The canceller hears the outcome even if it did not submit the request.
            link.send(m.BuildCancelled(request_id=msg.request_id))

    def _on_StatusRequest(self, link, msg: m.StatusRequest) -> None:
        status = self.state.request(msg.request_id)
        if status is None:
            link.send(m.Error(message=f"no request {msg.request_id}", request_id=msg.request_id))
        else:
            link.send(m.StatusReply(request=status))

    def _on_ListRequests(self, link, msg: m.ListRequests) -> None:
        link.send(m.RequestList(requests=self.state.requests()))

    def cancel(self, rid: str) -> bool:
        """Cancel request `rid`; False if it is not running."""
        if rid not in self.watchers:
            return False
        events = self.scheduler.cancel_request(rid)
        if not events:  # still graphing: nothing scheduled yet
            events = [RequestCancelled(rid)]
        self.apply(events)
        return True

    # -- events ----------------------------------------------------------------------------

    def apply(self, events) -> None:
        """Turn scheduler events into messages, state and log lines."""
        for event in events:
            getattr(self, f"_event_{type(event).__name__}")(event)

    def _event_RequestPlanned(self, e: RequestPlanned) -> None:
        plan = self.plans[e.request_id]
        cached = {n.id: n.cache_key for n in plan.graph.nodes.values()
                  if n.cache_key in plan.cached}
        self.state.planned(e.request_id, [], e.total, e.unbuilt)
        self.tell(e.request_id, m.GraphingFinished(
            request_id=e.request_id, total=e.total, unbuilt=e.unbuilt,
            system_cache_key=plan.graph.system.cache_key, cached=cached,
            log_names=self.lognames[e.request_id], warnings=plan.warnings))

    def _event_StepQueued(self, e: StepQueued) -> None:
        self.state.node_state(e.key, "ready")
        for rid, nid in e.requests.items():
            self.tell(rid, m.StepReady(request_id=rid, step=nid,
                                       log_name=self.lognames[rid][nid]))

    def _event_JobStarted(self, e: JobStarted) -> None:
        rid, nid = next(iter(e.requests.items()))
        graph = self.plans[rid].graph
        node = graph.nodes[nid]
        run = m.JobRun(job=e.job, step=node_to_dict(node),
                       closure=[node_to_dict(graph.nodes[d]) for d in graph.closure(nid)],
                       trove_git_url=self.settings.trove_git_url,
                       artifact_cache_url=self.settings.artifact_cache_url,
                       token=tokens.issue(self.secret, e.key, TOKEN_TTL))
        self.workers[e.worker].send(run)
        self.job_output[e.job] = deque(maxlen=REPLAY_LINES)
        self.state.attempt_started(e.job, e.key, e.worker)
        self.state.node_state(e.key, "running")
        self.log(f"{nid} started on {e.worker} (job {e.job})")
        for rid, nid in e.requests.items():
            self.tell(rid, m.StepStarted(request_id=rid, step=nid, worker=e.worker,
                                         log_name=self.lognames[rid][nid], attempt=e.attempt))

    def _event_StepJoined(self, e: StepJoined) -> None:
        work = self.scheduler.work[e.key]
        earlier = list(self.job_output.get(work.job or "", ()))
        for rid, nid in e.requests.items():
            self.tell(rid, m.StepStarted(request_id=rid, step=nid, worker=e.worker,
                                         log_name=self.lognames[rid][nid], attempt=e.attempt))
            if earlier:
                self.tell(rid, m.StepOutput(request_id=rid, step=nid, lines=earlier))

    def _event_StepBuilt(self, e: StepBuilt) -> None:
        result = self.job_results.pop(e.key, None)
        seconds = result.seconds if isinstance(result, m.JobFinished) else 0.0
        self.state.node_state(e.key, "built")
        for rid, nid in e.requests.items():
            self.tell(rid, m.StepFinished(request_id=rid, step=nid, worker=e.worker,
                                          seconds=seconds))
        for rid, (built, needed) in e.progress.items():
            self.state.progress(rid, built)
            self.tell(rid, m.BuildProgress(request_id=rid, built=built, total=needed))

    def _event_StepRequeued(self, e: StepRequeued) -> None:
        self.log(f"step {e.key[:12]} re-queued: {e.reason}")
        for job in [j for j in self.job_output if j not in self.scheduler.jobs]:
            self.job_output.pop(job)
            self.state.attempt_ended(job, "lost", e.reason)
        self.state.node_state(e.key, "ready")
        for rid, nid in e.requests.items():
            self.tell(rid, m.StepRetrying(request_id=rid, step=nid, worker=e.worker,
                                          reason=e.reason))

    def _event_StepFailed(self, e: StepFailed) -> None:
        result = self.job_results.pop(e.key, None)
        lines = result.last_lines if isinstance(result, m.JobFailed) else []
        self.state.node_state(e.key, "failed")
        for rid, nid in e.requests.items():
            self.tell(rid, m.StepFailed(request_id=rid, step=nid, worker=e.worker,
                                        reason=e.reason, last_lines=lines))

    def _event_JobCancelled(self, e: JobCancelled) -> None:
        link = self.workers.get(e.worker)
        if link is not None:
            link.send(m.JobCancel(job=e.job))
        self.job_output.pop(e.job, None)
        self.state.attempt_ended(e.job, "cancelled")

    def _event_RequestFinished(self, e: RequestFinished) -> None:
        plan = self.plans[e.request_id]
        base = self.settings.artifact_cache_url.rstrip("/")
        urls = [f"{base}/1.0/artifacts?filename={name}"
                for t in plan.targets for name in plan.graph.nodes[t].artifact_filenames()]
        self._end(e.request_id, "finished",
                  m.BuildFinished(request_id=e.request_id, artifacts=urls), artifacts=urls)

    def _event_RequestFailed(self, e: RequestFailed) -> None:
        plan = self.plans.get(e.request_id)
        nid = next((n.id for n in plan.graph.nodes.values() if n.cache_key == e.key), None) \
            if plan else None
        reason = f"{nid} failed: {e.reason}" if nid else e.reason
        self._end(e.request_id, "failed", m.BuildFailed(request_id=e.request_id, reason=reason),
                  reason)

    def _event_RequestCancelled(self, e: RequestCancelled) -> None:
        self._end(e.request_id, "cancelled", m.BuildCancelled(request_id=e.request_id))

    def _end(self, rid: str, state: str, message: m.Message, reason: str = "",
             artifacts: list[str] | None = None) -> None:
        self.tell(rid, message)
        self.state.ended(rid, state, reason, artifacts)
        self.log(f"request {rid} {state}{': ' + reason if reason else ''}")
        self.watchers.pop(rid, None)
        self.owners.pop(rid, None)
        self.plans.pop(rid, None)
        self.lognames.pop(rid, None)
        self._unpin(rid)

    def _unpin(self, rid: str) -> None:
        name = pin_name(rid)
        self._in_thread(self.cache.unpin, name, tokens.issue(self.secret, f"pin:{name}")
                        ).addErrback(lambda f: self.log(f"could not unpin {name}: "
                                                        f"{f.getErrorMessage()}"))

    def tell(self, rid: str, message: m.Message) -> None:
        for link in list(self.watchers.get(rid, ())):
            link.send(message)

    def _in_thread(self, fn, *args):
        from twisted.internet import threads

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)


def pin_name(rid: str) -> str:
    """The artifact cache pin that keeps request `rid`'s artifacts while it runs."""
    return f"request-{rid}"


def components(graph: BuildGraph, names: list[str]) -> list[str]:
    """Node ids for COMPONENT names: a stratum name, a chunk name, or STRATUM/CHUNK."""
    out = []
    for name in names:
        if f"stratum:{name}" in graph.nodes:
            out.append(f"stratum:{name}")
            continue
        if f"chunk:{name}" in graph.nodes:
            out.append(f"chunk:{name}")
            continue
        matches = [n.id for n in graph.nodes.values() if n.kind == "chunk" and n.name == name]
        if len(matches) == 1:
            out.append(matches[0])
        elif matches:
            options = ", ".join(m.split(":", 1)[1] for m in matches)
            raise DistbuildError(f"component '{name}' is a chunk of several strata; "
                                 f"name one of: {options}", graph.system.name)
        else:
            raise DistbuildError(f"component '{name}' is neither a stratum nor a chunk of "
                                 f"system {graph.system.name}", graph.system.name)
    return out


# -- command line --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="configuration file (default: $DISTBUILD_CONFIG); "
                                         "the controller reads its `controller:` section")
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--listen-address")
    parser.add_argument("--initiator-port", type=int)
    parser.add_argument("--worker-port", type=int)
    parser.add_argument("--trove-git-url")
    parser.add_argument("--artifact-cache-url")
    parser.add_argument("--ready-file", type=Path,
                        help="write the listening ports here as JSON once ready")


def settings_from(args: argparse.Namespace) -> ControllerSettings:
    """The `controller:` section of the configuration file, then command-line options."""
    return config.component_settings(
        ControllerSettings, args.config, "controller", state_dir=args.state_dir,
        listen_address=args.listen_address, initiator_port=args.initiator_port,
        worker_port=args.worker_port, trove_git_url=args.trove_git_url,
        artifact_cache_url=args.artifact_cache_url)


def run(args: argparse.Namespace) -> int:
    return serve(settings_from(args), args.ready_file)


_log = service_logger("controller")


def serve(settings: ControllerSettings, ready_file: Path | None = None) -> int:
    """Listen for initiators and workers and run the reactor (only `cli` calls this)."""
    from twisted.internet import error, reactor

    from distbuild.controller.links import link_factory

    controller = Controller(settings, reactor)
    reactor.suggestThreadPoolSize(8)
    ports = {}
    for role, port, keys in (
            ("initiator", settings.initiator_port, settings.initiator_authorized_keys),
            ("worker", settings.worker_port, settings.worker_authorized_keys)):
        factory = link_factory(role, controller, settings.host_key, keys, reactor,
                               settings.dead_after)
        try:
            listening = reactor.listenTCP(port, factory, interface=settings.listen_address)
        except error.CannotListenError as e:
            raise ConfigError(f"cannot listen for {role}s: {e.socketError}",
                              f"{settings.listen_address}:{port}") from None
        ports[f"{role}_port"] = listening.getHost().port

    def announce() -> None:
        info = {**ports, "pid": os.getpid(), "listen_address": settings.listen_address}
        _log(f"ready: {json.dumps(info)}")
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, ready_file)

    reactor.callWhenRunning(announce)
    reactor.addSystemEventTrigger("before", "shutdown", controller.state.close)
    _log(f"starting with {json.dumps({k: str(v) for k, v in asdict(settings).items()})}")
    reactor.run()
    return 0

"""Initiator messages: build requests and their planning, cancel, status and list.

Planning runs in a thread: definitions from the trove, the graph (or the one
an earlier request of the same commit made, see `plancache`), one cache query
and a pin; its result goes to the scheduler on the reactor thread.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from distbuild import tokens
from distbuild.controller import farm
from distbuild.controller.plancache import Graphed, graph_key, resolutions_of
from distbuild.controller.settings import TOKEN_TTL
from distbuild.definitions import (
    BuildGraph,
    Definitions,
    GitSource,
    build_graph,
    node_from_dict,
    node_to_dict,
)
from distbuild.errors import DistbuildError
from distbuild.lognames import log_names
from distbuild.protocol import messages as m
from distbuild.protocol.codec import Encoded
from distbuild.scheduling import PRIORITIES, PlannedRequest, plan_request, steps_from_graph
from distbuild.scheduling_labels import waiting_for_labels

if TYPE_CHECKING:
    from distbuild.controller.core import Controller


@dataclass
class Plan:
    graph: BuildGraph
    targets: list[str]
    cached: set[str]
    priority: str = "normal"
    warnings: list[str] = field(default_factory=list)
    _dicts: dict[str, dict] = field(default_factory=dict, repr=False)
    _texts: dict[str, str] = field(default_factory=dict, repr=False)  # node id -> its JSON
    saved: str = field(default="", repr=False)  # to_json(), made while planning
    # The scheduler's per-step work for it, made while planning (for `cached` as built).
    scheduling: PlannedRequest | None = field(default=None, repr=False)

    def node_dict(self, nid: str) -> dict:
        """Node `nid` as protocol data, made once: every job of the request sends closures."""
        data = self._dicts.get(nid)
        if data is None:
            data = self._dicts[nid] = node_to_dict(self.graph.nodes[nid])
        return data

    def node_text(self, nid: str) -> str:
        """Node `nid`'s JSON, made once (and shared by the plans of one kept graph)."""
        text = self._texts.get(nid)
        if text is None:
            text = self._texts[nid] = json.dumps(self.node_dict(nid), separators=(",", ":"))
        return text

    def closure(self, nid: str) -> Encoded:
        """The node dicts of everything `nid` needs, with their JSON made once per node."""
        nids = self.graph.closure(nid)
        return Encoded([self.node_dict(d) for d in nids], [self.node_text(d) for d in nids])

    def to_json(self) -> str:
        """The plan as the state database keeps it, for a restarted controller."""
        g = self.graph
        head = json.dumps({"system": g.system.id, "order": g.order, "targets": self.targets,
                           "cached": sorted(self.cached), "warnings": self.warnings,
                           "priority": self.priority})
        # The nodes' JSON is spliced in: made once per graph, not once per request.
        return f'{head[:-1]}, "nodes": [{",".join(self.node_text(n) for n in g.order)}]}}'

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        nodes = {d["id"]: node_from_dict(d) for d in data["nodes"]}
        return cls(BuildGraph(nodes[data["system"]], nodes, data["order"]), data["targets"],
                   set(data["cached"]), warnings=data.get("warnings", []),
                   priority=data.get("priority", "normal"))


def on_build_request(ctl: Controller, link, msg: m.BuildRequest) -> None:
    if msg.priority not in PRIORITIES:
        link.send(m.Error(message=f"build-request: priority must be one of "
                                  f"{', '.join(PRIORITIES)}, not '{msg.priority}'"))
        return
    submit(ctl, msg, link.peer, link)


def submit(ctl: Controller, msg: m.BuildRequest, initiator: str, link=None,
           schedule: str = "") -> str:
    """Record and plan a request from `initiator` (a link, or a schedule's run); its id."""
    rid = uuid.uuid4().hex[:12]
    ctl.state.add_request(rid, ctl.state.next_seq(), msg.system, msg.definitions_repo,
                          msg.definitions_commit, msg.components, initiator, schedule)
    ctl.watchers[rid] = {link} if link is not None else set()
    if link is not None and not msg.detach:
        ctl.owners[rid] = link
    if link is not None:
        link.send(m.RequestAccepted(request_id=rid))
        link.send(m.GraphingStarted(request_id=rid))
    ctl.log(f"request {rid}: {msg.system} at {msg.definitions_commit[:12]} from {initiator}")
    d = ctl.in_thread(plan, ctl, rid, msg)
    d.addCallbacks(lambda result: planned(ctl, rid, result),
                   lambda failure: plan_failed(ctl, rid, failure))
    return rid


def plan(ctl: Controller, rid: str, msg: m.BuildRequest) -> Plan:
    """Runs in a thread: the graph (kept from an earlier request if still valid), one cache
    query and a pin."""
    repo = ctl.aliases.resolve(msg.definitions_repo)
    trove = ctl.settings.trove_git_url.rstrip("/") + "/"
    if not repo.startswith(trove) or "/../" in repo[len(trove) - 1:]:
        # The controller reads only the network's trove: an initiator cannot make it
        # fetch from elsewhere (another host, or a path on the controller itself).
        raise DistbuildError(f"definitions must come from this network's trove "
                             f"({trove}), not {repo}", "build-request")
    strict = bool(msg.strict or ctl.settings.strict_definitions)
    key = graph_key(repo, msg.definitions_commit, msg.system, strict)
    graphed = ctl.plan_cache.get(key, ctl.resolver) if key is not None else None
    if graphed is None:
        graphed = _graph(ctl, repo, msg.definitions_commit, msg.system, strict)
        if key is not None:
            ctl.plan_cache.put(key, graphed)
    graph = graphed.graph
    targets = components(graph, msg.components) if msg.components else [graph.system.id]
    keys = sorted({n.cache_key for n in graph.nodes.values()})
    # Garbage collection must not remove what this build stages from, until it ends.
    ctl.cache.pin(pin_name(rid), keys, tokens.issue(ctl.secret, f"pin:{pin_name(rid)}"),
                  ttl=TOKEN_TTL)
    answer = ctl.cache.cached_sources(keys)
    result = Plan(graph, targets, {k for k, present in answer.items() if present},
                  warnings=list(graphed.warnings), priority=msg.priority,
                  _dicts=graphed.dicts, _texts=graphed.texts)
    # Made here, off the reactor thread, and all at once: made job by job, they
    # would keep the cyclic GC's full passes (which stop the reactor) coming
    # through the build.
    for nid in graph.order:
        result.node_dict(nid)
    result.saved = result.to_json()  # for the state database; also large, also made here
    result.scheduling = plan_request(rid, steps_from_graph(graph, ctl.settings.step_labels),
                                     targets, result.cached, msg.priority,
                                     held_by=ctl.scheduler.work)  # read-only, thread-safe
    return result


def _graph(ctl: Controller, repo: str, commit: str, system: str, strict: bool) -> Graphed:
    """The definitions at `commit` from the trove, and the graph of `system`."""
    path = ctl.mirrors.ensure(repo, commit)
    source = GitSource(path, commit)
    try:
        defs = Definitions(source, strict=strict)
        graph = build_graph(defs, system, ctl.resolver, ctl.aliases)
    finally:
        # GitPython's config readers make a cycle with the repository, which would
        # keep its git processes until the cyclic collector's next full pass.
        source.close()
    return Graphed(graph, list(defs.warnings), resolutions_of(graph))


def planned(ctl: Controller, rid: str, result: Plan) -> None:
    with ctl.state.batch():  # the nodes, the plan and the first steps ready: one commit
        _planned(ctl, rid, result)


def _planned(ctl: Controller, rid: str, result: Plan) -> None:
    if rid not in ctl.watchers:
        ctl.unpin(rid)  # cancelled while graphing, after its pin was made
        return
    if ctl.schedules.unchanged(rid, result):
        return
    graph = result.graph
    ctl.state.save_plan(rid, result.saved or result.to_json())
    ctl.state.planned(rid, [(n.id, n.cache_key, "built" if n.cache_key in result.cached
                             else "waiting") for n in graph.nodes.values()],
                      len(graph.nodes), 0)
    schedule(ctl, rid, result, result.cached)


def schedule(ctl: Controller, rid: str, result: Plan, built: set[str]) -> None:
    """Hand a planned request to the scheduler; `built` are the keys known to be built."""
    ctl.plans[rid] = result
    ctl.lognames[rid] = log_names(result.graph.order)
    planned_here, result.scheduling = result.scheduling, None
    if planned_here is None or built is not result.cached:
        planned_here = plan_request(rid, steps_from_graph(result.graph, ctl.settings.step_labels),
                                    result.targets, built, result.priority)
    ctl.apply(ctl.scheduler.add_planned(planned_here))


def plan_failed(ctl: Controller, rid: str, failure) -> None:
    error = failure.value
    reason = str(error) if isinstance(error, DistbuildError) else (
        f"internal error while computing the build graph: {failure.getErrorMessage()}")
    if not isinstance(error, DistbuildError):
        ctl.log(f"request {rid}: {failure.getTraceback()}")
    ctl.end(rid, "failed", m.BuildFailed(request_id=rid, reason=reason), reason)


def on_cancel_request(ctl: Controller, link, msg: m.CancelRequest) -> None:
    watching = link in ctl.watchers.get(msg.request_id, ())
    if not ctl.cancel(msg.request_id):
        link.send(m.Error(message=f"no running request {msg.request_id}",
                          request_id=msg.request_id))
    elif not watching:
        # The canceller hears the outcome even if it did not submit the request.
        link.send(m.BuildCancelled(request_id=msg.request_id))


def on_status_request(ctl: Controller, link, msg: m.StatusRequest) -> None:
    status = farm.status_with_steps(ctl, msg.request_id)
    if status is None:
        link.send(m.Error(message=f"no request {msg.request_id}", request_id=msg.request_id))
    else:
        waiting = waiting_for_labels(ctl.scheduler, msg.request_id)
        if waiting:
            status["waiting_for_labels"] = waiting
        status["verifications"] = ctl.verifier.records.of_request(msg.request_id)
        link.send(m.StatusReply(request=status))


def on_list_requests(ctl: Controller, link, msg: m.ListRequests) -> None:
    link.send(m.RequestList(requests=farm.request_rows(ctl, max(1, min(msg.limit, 1000)),
                                                       msg.state)))


HANDLERS = {
    m.BuildRequest: on_build_request,
    m.CancelRequest: on_cancel_request,
    m.StatusRequest: on_status_request,
    m.ListRequests: on_list_requests,
}


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

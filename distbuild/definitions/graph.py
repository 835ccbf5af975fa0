"""The build graph of a system: one node per chunk, stratum and the system itself.

Direct dependencies follow the definitions: a chunk depends on the sibling
chunks its build-depends names and on the strata its stratum build-depends
on; a stratum depends on its chunks and its build-depends strata; the system
depends on the strata it lists. The same chunk name in two strata is two
nodes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from distbuild.definitions.aliases import Aliases
from distbuild.definitions.cachekey import cache_key
from distbuild.definitions.load import Definitions, Document
from distbuild.definitions.model import PHASES, Chunk, ChunkSpec, SplitRule, Stratum, System
from distbuild.definitions.resolve import OfflineResolver, Resolved, Resolver
from distbuild.errors import DefinitionsError, MissingRepository

DEFAULT_PREFIX = "/usr"
DEFAULT_BUILD_MODE = "staging"


@dataclass
class Node:
    """One build step: everything needed to build it, and its cache key."""

    id: str
    kind: str
    name: str
    arch: str
    stratum: str | None = None
    depends: tuple[str, ...] = ()
    cache_key: str = ""
    # chunk
    repo: str | None = None
    ref: str | None = None
    commit: str | None = None
    tree: str | None = None
    build_mode: str | None = None
    prefix: str | None = None
    build_system: str | None = None
    commands: tuple[tuple[str, tuple[str, ...]], ...] = ()
    max_jobs: int | None = None
    system_integration: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    devices: tuple[dict[str, Any], ...] = ()
    submodules: dict[str, Any] = field(default_factory=dict)
    # chunk: file rules; stratum: chunk-artifact rules
    split_rules: tuple[SplitRule, ...] = ()
    # stratum
    artifact_overrides: dict[str, str] = field(default_factory=dict)
    # system
    strata_artifacts: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    configuration_extensions: tuple[str, ...] = ()

    @property
    def artifact_names(self) -> tuple[str, ...]:
        """The artifacts this step produces, known from definitions alone."""
        if self.kind == "system":
            return (f"{self.name}-rootfs",)
        return tuple(rule.artifact for rule in self.split_rules)

    def artifact_filenames(self) -> tuple[str, ...]:
        """Cache file names, `KEY.KIND.ARTIFACT`, as morph-cache-server names them."""
        return tuple(f"{self.cache_key}.{self.kind}.{a}" for a in self.artifact_names)

    def key_inputs(self) -> dict[str, Any]:
        """Everything besides dependencies that affects this step's output."""
        inputs: dict[str, Any] = {"kind": self.kind, "name": self.name, "arch": self.arch,
                                  "split-rules": [[r.artifact, list(r.include)]
                                                  for r in self.split_rules]}
        if self.kind == "chunk":
            inputs.update({
                "tree": self.tree, "build-mode": self.build_mode, "prefix": self.prefix,
                "commands": [[step, list(cmds)] for step, cmds in self.commands],
                "max-jobs": self.max_jobs,
                "system-integration": {a: {n: list(c) for n, c in s.items()}
                                       for a, s in self.system_integration.items()},
                "devices": list(self.devices), "submodules": self.submodules,
            })
        elif self.kind == "stratum":
            inputs["artifact-overrides"] = self.artifact_overrides
        else:
            inputs["strata-artifacts"] = {
                k: list(v) if v is not None else None for k, v in self.strata_artifacts.items()}
        return inputs


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def split_artifact(path: str, rules: Iterable[SplitRule]) -> str | None:
    """The artifact a file path (or chunk artifact name) belongs to: the first rule that matches.

    Patterns are anchored at the start, as morph's were (re.match).
    """
    for rule in rules:
        if any(_compiled(p).match(path) for p in rule.include):
            return rule.artifact
    return None


@dataclass
class BuildGraph:
    """The nodes of one system's build, in dependency order."""

    system: Node
    nodes: dict[str, Node]
    order: list[str]

    def closure(self, node_id: str) -> list[str]:
        """All transitive dependencies of `node_id`, in dependency order."""
        seen: set[str] = set()
        stack = list(self.nodes[node_id].depends)
        while stack:
            dep = stack.pop()
            if dep not in seen:
                seen.add(dep)
                stack.extend(self.nodes[dep].depends)
        # Sorting the closure, not scanning every node: a job per node of a big graph
        # would otherwise cost the square of its size.
        return sorted(seen, key=self._positions.__getitem__)

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {nid: i for i, nid in enumerate(self.order)}

    def critical_path(self) -> list[str]:
        """The longest chain of nodes, first step first."""
        length: dict[str, int] = {}
        best: dict[str, str | None] = {}
        for nid in self.order:
            deps = self.nodes[nid].depends
            top = max(deps, key=lambda d: length[d], default=None)
            best[nid] = top
            length[nid] = 1 + (length[top] if top else 0)
        end: str | None = max(self.order, key=lambda n: length[n])
        path = []
        while end is not None:
            path.append(end)
            end = best[end]
        return path[::-1]

    def remaining_lengths(self) -> dict[str, int]:
        """For each node, the number of nodes on the longest chain from it to the end."""
        dependents: dict[str, list[str]] = {n: [] for n in self.order}
        for nid in self.order:
            for dep in self.nodes[nid].depends:
                dependents[dep].append(nid)
        out: dict[str, int] = {}
        for nid in reversed(self.order):
            out[nid] = 1 + max((out[d] for d in dependents[nid]), default=0)
        return out

    def to_json(self) -> dict[str, Any]:
        """The graph as `distbuild graph --json` prints it."""
        return {
            "system": self.system.name,
            "arch": self.system.arch,
            "nodes": [
                {"id": n.id, "kind": n.kind, "name": n.name, "stratum": n.stratum,
                 "cache_key": n.cache_key, "build_mode": n.build_mode, "prefix": n.prefix,
                 "repo": n.repo, "ref": n.ref, "depends": list(n.depends)}
                for n in (self.nodes[i] for i in self.order)
            ],
            "critical_path": self.critical_path(),
        }


def chunk_id(stratum: str, chunk: str) -> str:
    return f"chunk:{stratum}/{chunk}"


def build_graph(defs: Definitions, system_path: str, resolver: Resolver | None = None,
                aliases: Aliases | None = None) -> BuildGraph:
    """Load `system_path` and everything it needs, and compute every node's cache key."""
    return _GraphBuilder(defs, resolver or OfflineResolver(), aliases or Aliases()).build(
        system_path)


class _GraphBuilder:
    def __init__(self, defs: Definitions, resolver: Resolver, aliases: Aliases):
        self.defs = defs
        self.resolver = resolver
        self.aliases = aliases
        self.resolved: dict[tuple[str, str], Resolved] = {}
        self.nodes: dict[str, Node] = {}

    def build(self, system_path: str) -> BuildGraph:
        system = self.defs.system(system_path)
        strata = self._strata_closure(system)
        names: dict[str, str] = {}
        for stratum in strata:
            if names.setdefault(stratum.name, stratum.path) != stratum.path:
                raise DefinitionsError(
                    f"two strata are named '{stratum.name}': {names[stratum.name]} and "
                    f"{stratum.path}", system.path)
        for stratum in strata:
            self._add_stratum(stratum, system.arch)
        self._add_system(system, strata)
        order = _topological(self.nodes)
        for nid in order:
            node = self.nodes[nid]
            node.cache_key = cache_key(node.key_inputs(),
                                       [self.nodes[d].cache_key for d in node.depends])
        return BuildGraph(self.nodes[f"system:{system.name}"], self.nodes, order)

    def _strata_closure(self, system: System) -> list[Stratum]:
        """The system's strata and their build-depends, dependencies first; cycles are errors."""
        system_doc = self.defs.document(system.path, "system")
        done: dict[str, Stratum] = {}
        for ref in system.strata:
            self._visit(ref.morph, (system_doc, ("strata", ref.index, "morph")), [], done)
        return list(done.values())

    def _visit(self, path: str, referrer: tuple[Document, tuple], stack: list[str],
               done: dict[str, Stratum]) -> None:
        if path in done:
            return
        if path in stack:
            cycle = " -> ".join([*stack[stack.index(path):], path])
            raise referrer[0].error(referrer[1], f"strata build-depends form a cycle: {cycle}")
        stratum = self.defs.stratum(path, referrer)
        doc = self.defs.document(path, "stratum")
        stack.append(path)
        for i, dep in enumerate(stratum.build_depends):
            self._visit(dep, (doc, ("build-depends", i, "morph")), stack, done)
        stack.pop()
        done[path] = stratum

    def _add_stratum(self, stratum: Stratum, arch: str) -> None:
        doc = self.defs.document(stratum.path, "stratum")
        # A name listed twice is one dependency, as morph had it: one edge, one key input.
        dep_strata = _unique(f"stratum:{self.defs.stratum(p).name}"
                             for p in stratum.build_depends)
        siblings = {spec.name for spec in stratum.chunks}
        for spec in stratum.chunks:
            for j, dep in enumerate(spec.build_depends):
                if dep not in siblings:
                    raise doc.error(("chunks", spec.index, "build-depends", j),
                                    f"chunk '{spec.name}' build-depends on '{dep}', which is not "
                                    f"a chunk of stratum '{stratum.name}'")
        _check_chunk_cycles(doc, stratum)
        for spec in stratum.chunks:
            node = self._chunk_node(doc, stratum, spec, arch)
            node.depends = _unique([*(chunk_id(stratum.name, d) for d in spec.build_depends),
                                    *dep_strata])
            self.nodes[node.id] = node
        defaults = self.defs.defaults
        self.nodes[f"stratum:{stratum.name}"] = Node(
            id=f"stratum:{stratum.name}", kind="stratum", name=stratum.name, arch=arch,
            depends=(*(chunk_id(stratum.name, s.name) for s in stratum.chunks), *dep_strata),
            split_rules=_split_rules(stratum.name, stratum.products,
                                     defaults.stratum_split_rules),
            artifact_overrides={k: v for s in stratum.chunks for k, v in s.artifacts.items()},
        )

    def _chunk_node(self, doc: Document, stratum: Stratum, spec: ChunkSpec, arch: str) -> Node:
        at = ("chunks", spec.index)
        chunk = self.defs.chunk(spec.morph, (doc, (*at, "morph"))) if spec.morph else None
        bs_name = spec.build_system or (chunk.build_system if chunk else None) or "manual"
        build_system = self.defs.defaults.build_systems[bs_name]
        commands = _commands(chunk, build_system.commands)
        repo = self.aliases.resolve(spec.repo)
        pinned = self.resolved.get((repo, spec.ref))
        if pinned is None:
            try:
                pinned = self.resolver.resolve(repo, spec.ref)
            except MissingRepository:
                raise doc.error((*at, "repo"), self._missing(spec, repo)) from None
            self.resolved[(repo, spec.ref)] = pinned
        return Node(
            id=chunk_id(stratum.name, spec.name), kind="chunk", name=spec.name, arch=arch,
            stratum=stratum.name, repo=repo, ref=spec.ref, commit=pinned.commit, tree=pinned.tree,
            build_mode=spec.build_mode or (chunk.build_mode if chunk else None)
            or DEFAULT_BUILD_MODE,
            prefix=spec.prefix or (chunk.prefix if chunk else None) or DEFAULT_PREFIX,
            build_system=bs_name, commands=commands,
            max_jobs=chunk.max_jobs if chunk else None,
            system_integration=dict(chunk.system_integration) if chunk else {},
            devices=chunk.devices if chunk else (),
            submodules=spec.submodules,
            split_rules=_split_rules(spec.name, chunk.products if chunk else (),
                                     self.defs.defaults.chunk_split_rules),
        )

    def _missing(self, spec: ChunkSpec, url: str) -> str:
        """What to say of a chunk whose repository does not exist: where, and what to do."""
        trove = self.aliases.trove_git_url.rstrip("/") + "/"
        if url.startswith(trove):
            return (f"chunk '{spec.name}': repository '{spec.repo}' is not on the trove "
                    f"({url}); add it with `distbuild trove import {url[len(trove):]} SOURCE`")
        return f"chunk '{spec.name}': repository '{spec.repo}' does not exist ({url})"

    def _add_system(self, system: System, strata: list[Stratum]) -> None:
        by_path = {s.path: s for s in strata}
        names = [by_path[ref.morph].name for ref in system.strata]
        selected = {by_path[ref.morph].name: ref.artifacts for ref in system.strata}
        self.nodes[f"system:{system.name}"] = Node(
            id=f"system:{system.name}", kind="system", name=system.name, arch=system.arch,
            depends=tuple(f"stratum:{n}" for n in names),
            strata_artifacts=selected,
            configuration_extensions=system.configuration_extensions,
        )


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    """`items` without repeats, first occurrence kept."""
    return tuple(dict.fromkeys(items))


def _commands(chunk: Chunk | None, defaults: dict[str, tuple[str, ...]]
              ) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Commands in phase order: a chunk's own list replaces the build system's of that name."""
    own = chunk.commands if chunk else {}
    steps = []
    for phase in PHASES:
        for step in (f"pre-{phase}", phase, f"post-{phase}"):
            name = f"{step}-commands"
            cmds = own[name] if name in own else defaults.get(name, ())
            if cmds:
                steps.append((step, tuple(cmds)))
    return tuple(steps)


def _split_rules(name: str, own: tuple[SplitRule, ...], defaults: tuple[SplitRule, ...]
                 ) -> tuple[SplitRule, ...]:
    """Own products first; then each default rule (`-suffix` becomes NAME-suffix) not replaced."""
    taken = {r.artifact for r in own}
    rules = list(own)
    for rule in defaults:
        full = name + rule.artifact if rule.artifact.startswith("-") else rule.artifact
        if full not in taken:
            rules.append(SplitRule(full, rule.include))
            taken.add(full)
    return tuple(rules)


def _check_chunk_cycles(doc: Document, stratum: Stratum) -> None:
    deps = {s.name: s.build_depends for s in stratum.chunks}
    index = {s.name: s.index for s in stratum.chunks}
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    for start in deps:
        if state.get(start):
            continue
        path = [start]
        iters = [iter(deps[start])]
        state[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                cycle = " -> ".join([*path[path.index(nxt):], nxt])
                raise doc.error(("chunks", index[nxt], "build-depends"),
                                f"chunk build-depends form a cycle in stratum "
                                f"'{stratum.name}': {cycle}")
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(deps[nxt]))


def _topological(nodes: dict[str, Node]) -> list[str]:
    """Dependencies before dependents; deterministic for a given graph."""
    order: list[str] = []
    done: set[str] = set()
    for start in nodes:
        if start in done:
            continue
        stack = [(start, iter(nodes[start].depends))]
        while stack:
            nid, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                if nid not in done:
                    done.add(nid)
                    order.append(nid)
            elif dep not in done:
                stack.append((dep, iter(nodes[dep].depends)))
    return order


def node_to_dict(node: Node) -> dict[str, Any]:
    """A node as plain JSON-able data, for the protocol (JobRun.step and .closure)."""
    # What dataclasses.asdict gives, without its deepcopy of every string: the
    # controller makes one of these per node of every request.
    data = {name: _plain(getattr(node, name)) for name in _NODE_FIELDS}
    data["split_rules"] = [{"artifact": r.artifact, "include": list(r.include)}
                           for r in node.split_rules]
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


_NODE_FIELDS = tuple(f.name for f in dataclasses.fields(Node))


def node_from_dict(data: dict[str, Any]) -> Node:
    """The inverse of node_to_dict; unknown keys are an error naming them."""
    names = {f.name for f in dataclasses.fields(Node)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DefinitionsError(f"unknown node fields {', '.join(unknown)}", data.get("id"))
    values = dict(data)
    values["split_rules"] = tuple(SplitRule(r["artifact"], tuple(r["include"]))
                                  for r in data.get("split_rules", ()))
    values["commands"] = tuple((step, tuple(cmds)) for step, cmds in data.get("commands", ()))
    values["depends"] = tuple(data.get("depends", ()))
    values["devices"] = tuple(data.get("devices", ()))
    values["configuration_extensions"] = tuple(data.get("configuration_extensions", ()))
    values["strata_artifacts"] = {k: tuple(v) if v is not None else None
                                  for k, v in data.get("strata_artifacts", {}).items()}
    values["system_integration"] = {a: {n: tuple(c) for n, c in s.items()}
                                    for a, s in data.get("system_integration", {}).items()}
    return Node(**values)

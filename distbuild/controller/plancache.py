"""Build graphs kept between requests, so a repeated request is not graphed again.

A graph is a function of the definitions tree (fixed by its commit), the
system, strictness, the controller's aliases (fixed for its life) and what
each chunk's (repository, ref) resolves to, which moves when a branch does.
So an entry is keyed by the first four and holds the resolutions its graph
used; a hit asks the resolver again for each (as graphing again would) and
is used only if every answer is the same. Entries are few and whole graphs,
least recently used dropped first.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from distbuild.definitions import BuildGraph
from distbuild.definitions.resolve import Resolved, Resolver
from distbuild.errors import DistbuildError

# A real system is a few hundred nodes; this many graphs is a few MB at most.
MAX_GRAPHS = 16
_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class GraphKey:
    """What, besides ref resolutions, decides a request's graph."""

    repo: str  # the definitions repository's URL, aliases expanded
    commit: str
    system: str
    strict: bool


@dataclass
class Graphed:
    """A graph with what it was made from, and the node data every plan of it shares."""

    graph: BuildGraph
    warnings: list[str]
    resolutions: dict[tuple[str, str], Resolved]
    # node id -> protocol dict, and -> its JSON: the same for every plan of this graph.
    dicts: dict[str, dict] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)


def graph_key(repo: str, commit: str, system: str, strict: bool) -> GraphKey | None:
    """The key of a request's graph; None unless `commit` is a full SHA (a branch moves)."""
    if not _SHA.fullmatch(commit):
        return None
    return GraphKey(repo, commit, system, strict)


def resolutions_of(graph: BuildGraph) -> dict[tuple[str, str], Resolved]:
    """Each chunk's (repository, ref) and the commit and tree the graph pinned it to."""
    return {(n.repo, n.ref): Resolved(n.commit, n.tree)
            for n in graph.nodes.values() if n.kind == "chunk"}


class PlanCache:
    """The last MAX_GRAPHS graphs by GraphKey; thread-safe (planning runs in threads)."""

    def __init__(self, max_graphs: int = MAX_GRAPHS):
        self.max_graphs = max_graphs
        self._entries: OrderedDict[GraphKey, Graphed] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: GraphKey, resolver: Resolver) -> Graphed | None:
        """The graph for `key` if every ref it used still resolves as it did; else None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is not None and self._still_resolves(entry, resolver):
            with self._lock:
                self.hits += 1
            return entry
        with self._lock:
            self.misses += 1
            if entry is not None and self._entries.get(key) is entry:
                del self._entries[key]
        return None

    def put(self, key: GraphKey, entry: Graphed) -> None:
        """Keep `entry` for `key`, dropping the least recently used beyond the limit."""
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_graphs:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _still_resolves(entry: Graphed, resolver: Resolver) -> bool:
        for (repo, ref), was in entry.resolutions.items():
            try:
                if resolver.resolve(repo, ref) != was:
                    return False
            except DistbuildError:
                return False  # graphing again reports it, with the definitions' context
        return True

"""A job's nodes, decoded once per worker rather than once per job.

Every job-run carries the node dicts of the step's whole dependency closure,
and the steps of one build share most of them: a chunk in the tenth layer of
a graph gets the ninety before it, job after job. Turning each dict into a
Node was a quarter of a worker's Python time in the sleep graph. A decoded
node is reused only when the dict it came from equals the new one (a
comparison in C), so a node whose definition changed under the same id is
decoded afresh, never mistaken for the old one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from distbuild.definitions import Node, node_from_dict

# About ten builds' worth of a few hundred nodes; each entry is a small dict and its Node.
KEEP_NODES = 4096


class NodeCache:
    """Node dicts to Nodes, the decoded ones kept (least recently used dropped)."""

    def __init__(self, keep: int = KEEP_NODES) -> None:
        self.keep = keep
        self._nodes: OrderedDict[tuple[str, str], tuple[dict, Node]] = OrderedDict()
        self._lock = threading.Lock()
        self.decoded = 0  # dicts actually decoded (the rest were found)

    def node(self, data: dict[str, Any]) -> Node:
        """The Node for `data` (a node dict off the wire); DefinitionsError if malformed."""
        key = (data.get("id"), data.get("cache_key"))
        with self._lock:
            found = self._nodes.get(key)
            if found is not None and found[0] == data:
                self._nodes.move_to_end(key)
                return found[1]
        node = node_from_dict(data)
        with self._lock:
            self.decoded += 1
            self._nodes[key] = (data, node)
            self._nodes.move_to_end(key)
            while len(self._nodes) > self.keep:
                self._nodes.popitem(last=False)
        return node

    def graph(self, step: dict[str, Any], closure: list[dict[str, Any]]) -> tuple[Node,
                                                                                  dict[str, Node]]:
        """A job's step and the nodes of its closure (and itself) by id."""
        node = self.node(step)
        nodes = {d["id"]: self.node(d) for d in closure}
        nodes[node.id] = node
        return node, nodes

"""The nodes a worker keeps decoded across jobs: reused only for an equal node dict."""

from __future__ import annotations

import json

import pytest

from distbuild.definitions import (
    Definitions,
    DirectorySource,
    build_graph,
    node_to_dict,
)
from distbuild.errors import DefinitionsError
from distbuild.examples import MORPHS
from distbuild.worker.nodes import NodeCache


def wire_nodes() -> list[dict]:
    graph = build_graph(Definitions(DirectorySource(MORPHS)), "systems/example-system-x86_64.morph")
    return [json.loads(json.dumps(node_to_dict(n))) for n in graph.nodes.values()]


def test_an_equal_node_dict_reuses_the_node_and_a_changed_one_is_decoded_again():
    nodes = NodeCache()
    wire = wire_nodes()
    step, closure = wire[-1], wire[:-1]
    first_step, first = nodes.graph(step, closure)
    again_step, again = nodes.graph(json.loads(json.dumps(step)), json.loads(json.dumps(closure)))
    assert again_step is first_step and all(again[k] is first[k] for k in first)
    assert nodes.decoded == len(wire)
    # The same id and cache key with a field that differs (a ref renamed, say) is not
    # mistaken for the node decoded before.
    changed = dict(step, ref="renamed-branch")
    node, _ = nodes.graph(changed, closure)
    assert node.ref == "renamed-branch" and first_step.ref != "renamed-branch"
    assert nodes.decoded == len(wire) + 1


def test_the_oldest_nodes_are_dropped_past_the_limit_and_bad_dicts_still_fail():
    nodes = NodeCache(keep=3)
    wire = wire_nodes()[:5]
    decoded = [nodes.node(d) for d in wire]
    assert nodes.node(wire[-1]) is decoded[-1]
    assert nodes.node(wire[0]) is not decoded[0]  # dropped, decoded again
    with pytest.raises(DefinitionsError, match="unknown node fields"):
        nodes.node(dict(wire[1], surprise=1))

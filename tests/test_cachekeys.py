"""Cache-key properties: stable across layout and order, and changes propagate exactly."""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distbuild.definitions import Definitions, DirectorySource, build_graph
from distbuild.definitions.cachekey import cache_key, canonical
from tests.defs_tree import write_tree

DEFAULTS = {"build-systems": {"manual": {}, "autotools": {"build-commands": ["make"]}}}


@st.composite
def trees(draw):
    """A random but valid definitions tree: strata in a DAG, chunks in a DAG within each."""
    n_strata = draw(st.integers(1, 4))
    strata = []
    for s in range(n_strata):
        deps = sorted(draw(st.sets(st.integers(0, s - 1), max_size=s)) if s else [])
        n_chunks = draw(st.integers(1, 5))
        chunks = []
        for c in range(n_chunks):
            chunks.append({
                "name": f"c{c}",
                "build-depends": sorted(draw(st.sets(st.integers(0, c - 1), max_size=c)))
                if c else [],
                "commands": draw(st.lists(st.text("abcdef xyz$\"'", min_size=1, max_size=8),
                                          max_size=3)),
                "build-system": draw(st.sampled_from(["manual", "autotools"])),
                "ref": draw(st.sampled_from(["master", "v1", "0123abcd"])),
            })
        strata.append({"deps": deps, "chunks": chunks})
    return strata


def render(tree, rng: random.Random | None = None) -> dict[str, dict | str]:
    """The files of `tree`; with `rng`, every mapping's keys come in a shuffled order."""

    def mapping(d: dict) -> dict:
        items = list(d.items())
        if rng:
            rng.shuffle(items)
        return dict(items)

    files: dict[str, dict | str] = {"VERSION": "version: 8\n", "DEFAULTS": mapping(DEFAULTS)}
    for s, stratum in enumerate(tree):
        specs = []
        for chunk in stratum["chunks"]:
            path = f"strata/s{s}/{chunk['name']}.morph"
            files[path] = mapping({"name": chunk["name"], "kind": "chunk",
                                   "build-system": chunk["build-system"],
                                   "install-commands": chunk["commands"]})
            specs.append(mapping({
                "name": chunk["name"], "morph": path, "repo": f"upstream:s{s}{chunk['name']}",
                "ref": chunk["ref"],
                "build-depends": [f"c{d}" for d in chunk["build-depends"]],
            }))
        files[f"strata/s{s}.morph"] = mapping({
            "name": f"s{s}", "kind": "stratum",
            "build-depends": [{"morph": f"strata/s{d}.morph"} for d in stratum["deps"]],
            "chunks": specs,
        })
    files["systems/sys.morph"] = mapping({
        "name": "sys", "kind": "system", "arch": "x86_64",
        "strata": [{"name": f"s{s}", "morph": f"strata/s{s}.morph"} for s in range(len(tree))],
    })
    return files


def keys_of(files) -> dict[str, str]:
    root = Path(tempfile.mkdtemp(prefix="distbuild-keys-"))
    try:
        write_tree(root, files)
        graph = build_graph(Definitions(DirectorySource(root)), "systems/sys.morph")
        return {nid: n.cache_key for nid, n in graph.nodes.items()}
    finally:
        shutil.rmtree(root)


def dependents_closure(files_tree, target: str) -> set[str]:
    root = Path(tempfile.mkdtemp(prefix="distbuild-keys-"))
    try:
        write_tree(root, render(files_tree))
        graph = build_graph(Definitions(DirectorySource(root)), "systems/sys.morph")
        return {nid for nid in graph.nodes if target in graph.closure(nid)} | {target}
    finally:
        shutil.rmtree(root)


SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(trees(), st.integers(0, 2**32))
def test_keys_do_not_depend_on_key_order_or_path(tree, seed):
    # Two checkouts in different directories, with every mapping in a different order.
    assert keys_of(render(tree)) == keys_of(render(tree, random.Random(seed)))


@SETTINGS
@given(trees(), st.data())
def test_changing_one_chunk_changes_it_and_its_dependents_only(tree, data):
    s = data.draw(st.integers(0, len(tree) - 1))
    c = data.draw(st.integers(0, len(tree[s]["chunks"]) - 1))
    target = f"chunk:s{s}/c{c}"
    before = keys_of(render(tree))
    changed_tree = [dict(st_, chunks=[dict(ch) for ch in st_["chunks"]]) for st_ in tree]
    chunk = changed_tree[s]["chunks"][c]
    change = data.draw(st.sampled_from(["commands", "ref", "build-system"]))
    if change == "commands":
        chunk["commands"] = [*chunk["commands"], "echo changed"]
    elif change == "ref":
        chunk["ref"] = chunk["ref"] + "-new"
    else:
        chunk["build-system"] = "manual" if chunk["build-system"] == "autotools" else "autotools"
    after = keys_of(render(changed_tree))
    changed = {nid for nid in before if before[nid] != after[nid]}
    assert changed == dependents_closure(tree, target)


def test_canonical_serialisation_is_typed():
    # The string "1" and the number 1, or a list and a joined string, never collide.
    assert canonical({"a": "1"}) != canonical({"a": 1})
    assert canonical({"a": ["x", "y"]}) != canonical({"a": "xy"})
    assert cache_key({"a": ["xy"]}, []) != cache_key({"a": ["x", "y"]}, [])
    assert cache_key({"a": 1}, ["k1", "k2"]) == cache_key({"a": 1}, ["k2", "k1"])

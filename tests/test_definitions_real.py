"""The real Baserock definitions in ../shared load and graph, with the documented numbers."""

import json
from collections import Counter
from pathlib import Path

import pytest

from distbuild.definitions import Definitions, DirectorySource, build_graph
from tests.conftest import BASEROCK, need_shared, run_distbuild

# Without ../shared each list holds one placeholder, whose test skips (or fails in CI).
SYSTEMS = sorted(
    str(p.relative_to(BASEROCK))
    for p in [*BASEROCK.glob("systems/*.morph"), *BASEROCK.glob("genivi/systems/*.morph")]
) or ["(no ../shared)"]
CLUSTERS = sorted(
    str(p.relative_to(BASEROCK))
    for p in [*BASEROCK.glob("clusters/*.morph"), *BASEROCK.glob("genivi/clusters/*.morph")]
) or ["(no ../shared)"]


@pytest.fixture(scope="module")
def defs():
    return Definitions(DirectorySource(need_shared(BASEROCK)))


def test_there_are_systems_to_check():
    need_shared(BASEROCK)
    assert len(SYSTEMS) == 87  # 81 in systems/ and 6 in genivi/systems/


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_system_graphs_offline(defs, system):
    graph = build_graph(defs, system)
    kinds = Counter(n.kind for n in graph.nodes.values())
    assert kinds["system"] == 1 and kinds["stratum"] >= 1 and kinds["chunk"] >= 1
    # Every dependency comes before its dependents, and every key is distinct.
    position = {nid: i for i, nid in enumerate(graph.order)}
    for nid, node in graph.nodes.items():
        assert all(position[d] < position[nid] for d in node.depends)
    assert len({n.cache_key for n in graph.nodes.values()}) == len(graph.nodes)
    assert graph.order[-1] == graph.system.id


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_every_cluster_loads(defs, cluster):
    loaded = defs.cluster(cluster)
    assert loaded.systems


def test_build_system_numbers(defs):
    graph = build_graph(defs, "systems/build-system-x86_64.morph")
    kinds = Counter(n.kind for n in graph.nodes.values())
    assert kinds["chunk"] == 230
    assert kinds["stratum"] == 24
    assert sum(1 for n in graph.nodes.values() if n.build_mode == "bootstrap") == 14
    path = graph.critical_path()
    assert len(path) == 51
    assert path[-1] == "system:build-system-x86_64"
    assert path[0].startswith("chunk:build-essential/stage1-")


def test_same_chunk_name_in_two_strata_is_two_nodes(defs):
    # The cross-bootstrap systems hold groff, openssh and rsync in two strata each.
    graph = build_graph(defs, "systems/cross-bootstrap-system-x86_64-generic.morph")
    groff = [n for n in graph.nodes.values() if n.kind == "chunk" and n.name == "groff"]
    assert len(groff) == 2
    assert len({n.stratum for n in groff}) == 2
    assert groff[0].cache_key != groff[1].cache_key


def test_chunk_artifacts_follow_products_then_defaults(defs):
    graph = build_graph(defs, "systems/build-system-x86_64.morph")
    gcc = graph.nodes["chunk:build-essential/gcc"]
    names = gcc.artifact_names
    # gcc.morph's own products come first and replace the defaults of the same name.
    assert names[:3] == ("gcc-libs", "gcc-doc", "gcc-devel")
    assert names.count("gcc-devel") == 1 and "gcc-misc" in names


def test_graph_json_for_build_system(baserock):
    proc = run_distbuild("graph", "--offline", "--json", "--definitions", str(baserock),
                         "systems/build-system-x86_64.morph", check=True)
    out = json.loads(proc.stdout)
    assert out["system"] == "build-system-x86_64" and out["arch"] == "x86_64"
    ids = {n["id"] for n in out["nodes"]}
    assert len(out["nodes"]) == 230 + 24 + 1 == len(ids)
    assert len(out["critical_path"]) == 51
    first = out["nodes"][0]
    assert set(first) == {"id", "kind", "name", "stratum", "cache_key", "build_mode", "prefix",
                          "repo", "ref", "depends"}
    binutils = next(n for n in out["nodes"] if n["id"] == "chunk:build-essential/stage1-binutils")
    assert binutils["build_mode"] == "bootstrap" and binutils["prefix"] == "/tools"
    assert binutils["repo"].endswith("/delta/binutils-tarball")
    assert binutils["ref"] == "5500a97a2ad1735db5b35bc51cfb825c1f4c38df"
    system = next(n for n in out["nodes"] if n["kind"] == "system")
    assert system["stratum"] is None and system["repo"] is None
    assert all(dep in ids for n in out["nodes"] for dep in n["depends"])


def test_graph_runs_from_inside_the_definitions_checkout(baserock):
    proc = run_distbuild("graph", "--offline", "systems/minimal-system-x86_64-generic.morph",
                         cwd=Path(baserock), check=True)
    assert "critical path" in proc.stdout and "Build order:" in proc.stdout


def test_nova_lists_oslo_messaging_twice_and_gets_one_edge(baserock):
    # strata/openstack-services.morph names oslo-messaging twice in nova's build-depends.
    proc = run_distbuild("graph", "--offline", "--json", "--definitions", str(baserock),
                         "systems/openstack-system-x86_64.morph", check=True)
    nodes = {n["id"]: n for n in json.loads(proc.stdout)["nodes"]}
    depends = nodes["chunk:openstack-services/nova"]["depends"]
    assert depends.count("chunk:openstack-services/oslo-messaging") == 1
    assert len(depends) == len(set(depends))


def test_real_definitions_carry_no_unknown_fields(defs):
    # So loading them strictly changes nothing; a typo added later would show here.
    for system in SYSTEMS:
        build_graph(defs, system)
    assert defs.warnings == []

"""The controller keeps build graphs between requests, and uses one only while it is valid.

The controller plans from real git repositories (file:// URLs standing in for
the trove's git) and asks a real trove's artifact cache, as it does for a build.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from distbuild.controller import requests
from distbuild.controller.core import Controller
from distbuild.controller.plancache import Graphed, PlanCache, graph_key, resolutions_of
from distbuild.definitions import Definitions, DirectorySource, build_graph
from distbuild.definitions.resolve import OfflineResolver
from distbuild.errors import DefinitionsError
from distbuild.protocol import messages as m
from tests import test_controller_strict as strictness
from tests.defs_tree import BASE_FILES, write_tree

# The same trove, definitions (with a typo warned about) and controller as the
# strictness tests.
cache = strictness.cache
request_for = strictness.request_for

GIT_USER = ["-c", "user.name=t", "-c", "user.email=t@127.0.0.1"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _commit_all(repo: Path, message: str) -> str:
    _git(repo, "add", "-A")
    _git(repo, *GIT_USER, "commit", "-qm", message)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def trove(request_for) -> Path:
    """A trove's repositories on disk: definitions (with a typo warned about) and chunks."""
    return request_for[0]


@pytest.fixture
def ctl(tmp_path, trove, cache) -> Controller:
    controller = strictness._controller(tmp_path, trove, cache, strict=False)
    controller.resolver.ttl = 0  # every request asks where branches point now
    return controller


def _request(trove: Path, **fields) -> m.BuildRequest:
    defs = trove / "defs"
    return m.BuildRequest(definitions_repo=f"file://{defs}",
                          definitions_commit=fields.pop("commit", _git(defs, "rev-parse", "HEAD")),
                          system="systems/s.morph", **fields)


def _keys(plan: requests.Plan) -> dict[str, str]:
    return {nid: n.cache_key for nid, n in plan.graph.nodes.items()}


def test_the_same_commit_again_is_not_graphed_again(ctl, trove):
    first = requests.plan(ctl, "r1", _request(trove))
    # Without its mirror of the definitions, only a kept graph can plan the request.
    shutil.rmtree(ctl.mirrors.root)
    again = requests.plan(ctl, "r2", _request(trove, components=["b"]))
    assert again.graph is first.graph
    assert _keys(again) == _keys(first)
    assert again.warnings == first.warnings == [
        "strata/base.morph:8: chunks[0].unpretrify-ref: unknown field; "
        "did you mean 'unpetrify-ref'?"]
    assert again.targets == ["chunk:base/b"]
    assert (ctl.plan_cache.hits, ctl.plan_cache.misses) == (1, 1)


def test_a_moved_branch_is_graphed_again(ctl, trove):
    first = requests.plan(ctl, "r1", _request(trove))
    (trove / "delta" / "a" / "README").write_text("a, changed\n")
    _commit_all(trove / "delta" / "a", "moved")
    again = requests.plan(ctl, "r2", _request(trove))
    assert again.graph is not first.graph
    changed = {nid for nid, key in _keys(again).items() if key != _keys(first)[nid]}
    # a, b (build-depends on a), the stratum, apps (build-depends on base), c, the system.
    assert "chunk:base/a" in changed and "chunk:apps/c" in changed
    assert again.graph.nodes["chunk:base/a"].commit == _git(trove / "delta" / "a",
                                                            "rev-parse", "HEAD")
    # The new graph is the one kept: a third request uses it.
    assert requests.plan(ctl, "r3", _request(trove)).graph is again.graph


def test_another_commit_is_graphed_anew(ctl, trove):
    first = requests.plan(ctl, "r1", _request(trove))
    defs = trove / "defs"
    (defs / "strata" / "base" / "a.morph").write_text(
        BASE_FILES["strata/base/a.morph"].replace("- make\n", "- make -j1\n", 1))
    newer = _commit_all(defs, "changed a")
    again = requests.plan(ctl, "r2", _request(trove, commit=newer))
    assert again.graph is not first.graph
    assert _keys(again)["chunk:base/a"] != _keys(first)["chunk:base/a"]
    assert _keys(again)["chunk:base/b"] != _keys(first)["chunk:base/b"]
    old = requests.plan(ctl, "r3", _request(trove, commit=_git(defs, "rev-parse", "HEAD~1")))
    assert old.graph is first.graph


def test_a_strict_request_is_not_answered_by_a_lenient_graph(ctl, trove):
    requests.plan(ctl, "r1", _request(trove))
    with pytest.raises(DefinitionsError, match="unpretrify-ref: unknown field"):
        requests.plan(ctl, "r2", _request(trove, strict=True))


def test_a_branch_name_is_graphed_every_time(ctl, trove):
    branch = _git(trove / "defs", "rev-parse", "--abbrev-ref", "HEAD")
    first = requests.plan(ctl, "r1", _request(trove, commit=branch))
    again = requests.plan(ctl, "r2", _request(trove, commit=branch))
    assert again.graph is not first.graph
    assert len(ctl.plan_cache) == 0


def test_the_cache_keeps_the_most_recently_used_graphs(tmp_path):
    defs = write_tree(tmp_path / "defs", BASE_FILES)
    graphs = PlanCache(max_graphs=2)
    keys = [graph_key("file:///defs", c * 40, "systems/s.morph", False) for c in "abc"]
    for key in keys:
        graph = build_graph(Definitions(DirectorySource(defs)), "systems/s.morph")
        graphs.put(key, Graphed(graph, [], resolutions_of(graph)))
        graphs.get(keys[0], resolver=OfflineResolver())  # used again: the last kept after the limit
    assert len(graphs) == 2
    assert graphs.get(keys[0], resolver=OfflineResolver()) is not None
    assert graphs.get(keys[1], resolver=OfflineResolver()) is None
    assert graphs.get(keys[2], resolver=OfflineResolver()) is not None

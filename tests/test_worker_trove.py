"""The example system built step by step from real definitions against a real trove.

The trove runs as its own process on 127.0.0.1 and serves the example
sources as delta/NAME; the definitions engine computes the graph with refs
resolved through git; every step downloads its dependencies from the
trove's cache and uploads its results with a token bound to its cache key.
"""

from __future__ import annotations

import re

import pytest

from distbuild import examples, sandbox, tokens
from distbuild.definitions import (
    Aliases,
    Definitions,
    DirectorySource,
    build_graph,
    node_from_dict,
    node_to_dict,
)
from distbuild.trove.client import CacheClient, CacheClientError
from distbuild.trove.refs import GitResolver
from distbuild.worker import artifacts
from distbuild.worker.cache import LocalArtifactCache
from distbuild.worker.chunk import staged_chunks
from distbuild.worker.errors import MissingArtifact
from distbuild.worker.remote import TroveArtifactSource, records_in_one_query, upload
from distbuild.worker.sources import GitSources
from distbuild.worker.step import StepRunner, WorkerSettings
from tests.trove_process import TroveProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trove(tmp_path_factory):
    root = tmp_path_factory.mktemp("trove")
    examples.make_all(root / "git" / "delta", bare=True)
    trove = TroveProcess(root).start()
    yield trove
    trove.stop()


@pytest.fixture(scope="module")
def graph(trove, tmp_path_factory):
    defs = Definitions(DirectorySource(examples.MORPHS))
    resolver = GitResolver(tmp_path_factory.mktemp("resolver-mirrors"))
    return build_graph(defs, "systems/example-system-x86_64.morph", resolver,
                       Aliases(trove.git_url))


def run_job(runner: StepRunner, step: dict, closure: list[dict], client: CacheClient,
            token: str) -> set[str]:
    """What the worker service does with a job-run message; the file names uploaded."""
    node = node_from_dict(step)
    nodes = {d["id"]: node_from_dict(d) for d in closure}
    nodes[node.id] = node
    result = runner.run(node, nodes)
    upload(result, client, token)
    return {a.filename for a in [*result.artifacts, result.meta]}


def worker(trove, path) -> tuple[StepRunner, CacheClient]:
    client = CacheClient(trove.cache_url)
    runner = StepRunner(WorkerSettings(path, staging_over_host=True),
                        GitSources(path / "mirrors"),
                        LocalArtifactCache(path / "cache", TroveArtifactSource(client)))
    return runner, client


def test_example_system_builds_step_by_step_through_the_trove(trove, graph, tmp_path):
    # Two workers, alternating, so every dependency crosses the trove's cache.
    workers = [worker(trove, tmp_path / "w1"), worker(trove, tmp_path / "w2")]
    for i, node_id in enumerate(graph.order):
        runner, client = workers[i % 2]
        node = graph.nodes[node_id]
        token = tokens.issue(trove.secret, node.cache_key)
        closure = [node_to_dict(graph.nodes[d]) for d in graph.closure(node_id)]
        uploaded = run_job(runner, node_to_dict(node), closure, client, token)
        assert set(node.artifact_filenames()) <= set(uploaded)
    fresh, _ = worker(trove, tmp_path / "fresh")
    fresh.run(graph.nodes["stratum:example-apps"], graph.nodes)
    assert fresh.cache.downloads == 0  # sha256s come from the trove's records
    # A chunk's worker asks for all its staged sources' records in one query.
    hello = graph.nodes["chunk:example-apps/hello"]
    cache = LocalArtifactCache(tmp_path / "fresh2", TroveArtifactSource(CacheClient(
        trove.cache_url)))
    records_in_one_query(cache.source, cache, hello, graph.nodes)

    def no_more_queries(key):
        raise AssertionError(f"asked for {key} alone")

    cache.source.client.source_meta = no_more_queries
    staged = [artifacts.artifact_filename(dep.cache_key, "chunk", rule.artifact)
              for dep in staged_chunks(hello, graph.nodes) for rule in dep.split_rules]
    empty = [name for name in staged if cache.known_empty(name)]
    assert len(staged) >= 12 and 0 < len(empty) < len(staged)
    client = workers[0][1]
    assert all(client.cached_sources([n.cache_key for n in graph.nodes.values()]).values())
    assert b"=== build commands ===" in client.fetch_log(
        graph.nodes["chunk:example-apps/hello"].cache_key)

    (system_file,) = graph.system.artifact_filenames()
    tarball = tmp_path / "system.tar.gz"
    client.download(system_file, tarball)
    root = tmp_path / "root"
    root.mkdir()
    names = artifacts.extract(tarball, root, system_file)
    assert "usr/bin/hello" in names and "usr/lib/libgreet.so.1" in names

    source = (examples.SOURCES / "libgreet" / "greet.c").read_text()
    greeting = re.search(r'greet_message\(void\)\s*\{\s*return "([^"]+)";', source).group(1)
    lines: list[str] = []
    spec = sandbox.SandboxSpec(argv=("hello",), root=None, layout=sandbox.merged_layout(root),
                               binds=sandbox.host_binds(), env={"PATH": "/usr/bin:/bin"})
    assert sandbox.run(spec, on_line=lines.append) == 0
    assert lines == [greeting]
    assert (root / "etc/hello-version").read_text() == "hello 1.0 (libgreet 1.0)\n"


def test_upload_needs_a_token_for_the_steps_own_key(trove, graph, tmp_path):
    runner, client = worker(trove, tmp_path / "w")
    node = graph.nodes["chunk:example-core/base-files"]
    wrong = tokens.issue(trove.secret, "0" * 64)
    with pytest.raises(CacheClientError, match=r"answered 40[13]"):
        run_job(runner, node_to_dict(node), [], client, wrong)


def test_missing_dependency_in_the_trove_is_named(trove, graph, tmp_path):
    runner, client = worker(trove, tmp_path / "w")
    node = graph.nodes["chunk:example-apps/hello"]
    closure = [node_to_dict(graph.nodes[d]) for d in graph.closure(node.id)]
    for item in closure:  # keys nobody built
        item["cache_key"] = "f" * 64
    with pytest.raises(MissingArtifact, match=f"{'f' * 64}.chunk.libgreet-"):
        run_job(runner, node_to_dict(node), closure, client,
                tokens.issue(trove.secret, node.cache_key))


def test_build_step_command_uses_the_trove_and_uploads(trove, graph, tmp_path):
    from tests.conftest import MORPHS, run_distbuild

    node = graph.nodes["chunk:example-apps/motd"]
    token = tokens.issue(trove.secret, node.cache_key)
    proc = run_distbuild(
        "build-step", "--definitions", str(MORPHS), "--work-dir", str(tmp_path / "w"),
        "--artifact-cache-url", trove.cache_url, "--trove-git-url", trove.git_url,
        "--staging-over-host", "--with-deps", "--upload-token", token,
        "systems/example-system-x86_64.morph", "motd", check=True)
    assert f"Uploaded {node.id} to {trove.cache_url}" in proc.stdout
    client = CacheClient(trove.cache_url)
    assert client.cached_sources([node.cache_key]) == {node.cache_key: True}

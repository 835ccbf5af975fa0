"""Fixed cost of a worker step around its commands, for a small chunk.

Starts a real trove on 127.0.0.1 serving the example sources, computes the
example system's graph with the definitions engine, and builds example-core
through it. Then it builds a probe chunk many times: motd's node with its
commands replaced by one `true`, which stages example-core's 12 chunk
artifacts. Each run gets a fresh cache key, so every run really uploads.

A step's fixed cost is everything but the command's own work: checking out
a warm source from the worker's mirror, staging, starting the sandbox,
splitting and packing six artifacts, the log and metadata, publishing, and
uploading to the trove with a token. Goal: median under 200 ms.

    .venv/bin/python benchmarks/step_overhead.py [--runs N]
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distbuild import examples, sandbox, tokens
from distbuild.definitions import Aliases, Definitions, DirectorySource, build_graph
from distbuild.trove.client import CacheClient
from distbuild.trove.refs import GitResolver
from distbuild.worker.cache import LocalArtifactCache
from distbuild.worker.remote import TroveArtifactSource, upload
from distbuild.worker.sources import GitSources
from distbuild.worker.step import StepRunner, WorkerSettings
from tests.trove_process import TroveProcess


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="step-overhead-") as tmp:
        base = Path(tmp)
        examples.make_all(base / "trove" / "git" / "delta", bare=True)
        trove = TroveProcess(base / "trove").start()
        try:
            figures = _measure(base, trove, args.runs)
        finally:
            trove.stop()
    totals, commands, uploads, bare = figures
    print(f"runs: {args.runs}; staged chunk artifacts: 12; artifacts packed per step: 6")
    _row("whole step incl. upload, ms", totals)
    _row("  of which the sandboxed `true`, ms", commands)
    _row("  of which the upload to the trove, ms", uploads)
    _row("sandbox start+exit alone (sh -c true), ms", bare)
    median = statistics.median(totals) * 1000
    print(f"median fixed cost per step: {median:.1f} ms (goal < 200 ms)")
    return 0 if median < 200 else 1


def _measure(base: Path, trove: TroveProcess, runs: int):
    defs = Definitions(DirectorySource(examples.MORPHS))
    graph = build_graph(defs, "systems/example-system-x86_64.morph",
                        GitResolver(base / "resolver"), Aliases(trove.git_url))
    client = CacheClient(trove.cache_url)
    runner = StepRunner(WorkerSettings(base / "work", staging_over_host=True),
                        GitSources(base / "work/mirrors"),
                        LocalArtifactCache(base / "work/cache", TroveArtifactSource(client)))
    for node_id in [*graph.closure("stratum:example-core"), "stratum:example-core"]:
        node = graph.nodes[node_id]
        upload(runner.run(node, graph.nodes), client, tokens.issue(trove.secret, node.cache_key))
    probe = dataclasses.replace(graph.nodes["chunk:example-apps/motd"],
                                commands=(("install", ("true",)),))
    runner.run(probe, graph.nodes)  # warm the mirror, as a worker's would be
    totals, commands, uploads = [], [], []
    for _ in range(runs):
        node = dataclasses.replace(probe, cache_key=secrets.token_hex(32))
        token = tokens.issue(trove.secret, node.cache_key)
        started = time.perf_counter()
        result = runner.run(node, graph.nodes)
        sent = time.perf_counter()
        upload(result, client, token)
        done = time.perf_counter()
        totals.append(done - started)
        commands.append(result.command_seconds)
        uploads.append(done - sent)
    return totals, commands, uploads, _bare_sandbox_start(base)


def _bare_sandbox_start(base: Path) -> list[float]:
    root = base / "bare-root"
    root.mkdir()
    spec = sandbox.SandboxSpec(argv=("sh", "-c", "true"), root=None,
                               layout=sandbox.merged_layout(root),
                               binds=sandbox.host_binds(), env={"PATH": "/usr/bin:/bin"})
    out = []
    for _ in range(20):
        started = time.perf_counter()
        sandbox.run(spec)
        out.append(time.perf_counter() - started)
    return out


def _row(label: str, values: list[float]) -> None:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    print(f"{label:45s} median {statistics.median(ms):7.1f}  p90 {p90:7.1f}  "
          f"min {ms[0]:7.1f}")


if __name__ == "__main__":
    sys.exit(main())

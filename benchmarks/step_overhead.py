"""Fixed cost of a worker step around its commands, for a small chunk.

Builds example-core once, then builds a chunk that stages example-core's
12 chunk artifacts and runs one command (`true`) many times. A step's
overhead is everything but the command itself: checking out a warm source
from the worker's mirror, staging, starting the sandbox, splitting and
packing six artifacts, writing the log and metadata, publishing, and
uploading to a directory artifact store. Goal: median under 200 ms.

    .venv/bin/python benchmarks/step_overhead.py [--runs N] [--no-host-layer]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distbuild import examples, sandbox
from distbuild.worker.cache import DirectoryArtifactStore, LocalArtifactCache
from distbuild.worker.sources import GitSources
from distbuild.worker.step import StepRunner, WorkerSettings
from tests.worker_graph import build_order, example_graph


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-host-layer", action="store_true",
                        help="measure a step whose staging area is not merged with the host")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="step-overhead-") as tmp:
        base = Path(tmp)
        commits = examples.make_all(base / "repos")
        nodes = example_graph(base / "repos", commits)
        store = DirectoryArtifactStore(base / "store")
        runner = StepRunner(WorkerSettings(base / "work", staging_over_host=True),
                            GitSources(base / "work/mirrors"),
                            LocalArtifactCache(base / "work/cache", store))
        for node_id in build_order(nodes):
            if node_id.startswith(("chunk:example-core", "stratum:example-core")):
                store.upload(runner.run(nodes[node_id], nodes).files)
        if args.no_host_layer:
            runner.settings.staging_over_host = False
        probe = dataclasses.replace(
            nodes["chunk:example-apps/motd"], commands=(("install", ("true",)),))
        if args.no_host_layer:
            probe = dataclasses.replace(probe, commands=())
        totals, commands = [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            result = runner.run(probe, nodes)
            store.upload(result.files)
            totals.append(time.perf_counter() - started)
            commands.append(result.command_seconds)
        bare = _bare_sandbox_start(base)
    overhead = [t - 0 for t in totals]
    print(f"runs: {args.runs}; staged artifacts: 12; host layer: {not args.no_host_layer}")
    _row("step total (1 command: true), ms", overhead)
    _row("  of which in the sandboxed command, ms", commands)
    _row("sandbox start+exit alone (sh -c true), ms", bare)
    median = statistics.median(overhead) * 1000
    print(f"median fixed cost per step: {median:.1f} ms (goal < 200 ms)")
    return 0 if median < 200 else 1


def _bare_sandbox_start(base: Path) -> list[float]:
    root = base / "bare-root"
    root.mkdir()
    layout = sandbox.merged_layout(root)
    spec = sandbox.SandboxSpec(argv=("sh", "-c", "true"), root=None, layout=layout,
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

#!/usr/bin/env python3
"""Definitions engine speed: one graph as a whole process, all systems, a 10,000-chunk tree.

Prints figures; goals (issue 2): build-system graph as a process < 0.5 s wall,
all 81 systems in one process < 3 s, a generated 10,000-chunk tree < 10 s.
Usage: benchmarks/definitions_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from distbuild.definitions import Definitions, DirectorySource, build_graph  # noqa: E402

BASEROCK = PROJECT.parent / "shared" / "baserock-definitions"


def whole_process(runs: int) -> list[float]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "distbuild", "graph", "--offline", "--json",
                        "--definitions", str(BASEROCK), "systems/build-system-x86_64.morph"],
                       check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return times


def all_systems() -> tuple[int, float]:
    start = time.perf_counter()
    defs = Definitions(DirectorySource(BASEROCK))
    systems = sorted(str(p.relative_to(BASEROCK)) for p in BASEROCK.glob("systems/*.morph"))
    for system in systems:
        build_graph(defs, system)
    return len(systems), time.perf_counter() - start


def generate(root: Path, n_strata: int = 50, per_stratum: int = 200, seed: int = 1) -> int:
    """A tree of n_strata x per_stratum chunks, each with its own chunk morphology."""
    rng = random.Random(seed)
    (root / "VERSION").write_text("version: 8\n")
    (root / "DEFAULTS").write_text(
        "build-systems:\n  manual: {}\n  autotools:\n    build-commands: [make]\n")
    for s in range(n_strata):
        (root / "strata" / f"s{s}").mkdir(parents=True)
        lines = [f"name: s{s}", "kind: stratum"]
        deps = rng.sample(range(s), min(s, 2))
        if deps:
            lines.append("build-depends:")
            lines += [f"- morph: strata/s{d}.morph" for d in deps]
        lines.append("chunks:")
        for c in range(per_stratum):
            (root / "strata" / f"s{s}" / f"c{c}.morph").write_text(
                f"name: c{c}\nkind: chunk\nbuild-system: autotools\n"
                f"install-commands:\n- make DESTDIR=\"$DESTDIR\" install-{c}\n")
            lines += [f"- name: c{c}", f"  morph: strata/s{s}/c{c}.morph",
                      f"  repo: upstream:s{s}-c{c}", f"  ref: {rng.getrandbits(160):040x}"]
            cdeps = rng.sample(range(c), min(c, 3))
            if cdeps:
                lines.append("  build-depends:")
                lines += [f"  - c{d}" for d in cdeps]
        (root / "strata" / f"s{s}.morph").write_text("\n".join(lines) + "\n")
    (root / "systems").mkdir()
    (root / "systems" / "big.morph").write_text(
        "name: big\nkind: system\narch: x86_64\nstrata:\n"
        + "".join(f"- morph: strata/s{s}.morph\n" for s in range(n_strata)))
    return n_strata * per_stratum


def big_tree() -> tuple[int, int, float]:
    root = Path(tempfile.mkdtemp(prefix="distbuild-bench-"))
    try:
        chunks = generate(root)
        start = time.perf_counter()
        graph = build_graph(Definitions(DirectorySource(root)), "systems/big.morph")
        elapsed = time.perf_counter() - start
        return chunks, len(graph.nodes), elapsed
    finally:
        shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    times = whole_process(args.runs)
    print(f"graph --offline --json build-system-x86_64, whole process: median "
          f"{statistics.median(times):.3f} s, max {max(times):.3f} s over {len(times)} runs "
          f"(goal < 0.5 s)")
    count, elapsed = all_systems()
    print(f"all {count} systems in one process: {elapsed:.2f} s (goal < 3 s)")
    chunks, nodes, elapsed = big_tree()
    print(f"generated tree of {chunks} chunks ({nodes} nodes): {elapsed:.2f} s (goal < 10 s)")


if __name__ == "__main__":
    main()

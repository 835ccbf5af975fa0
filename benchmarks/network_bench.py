#!/usr/bin/env python3
"""The network's cost: overhead per step, and the makespan of a 100-step DAG against make -j4.

1. Overhead: 40 independent chunks whose only command is `true`, on 2
   workers. For each step, the controller's wall time (JobRun sent to the
   upload confirmed with the cache) minus the worker's own step time is the
   network's overhead (goal: median < 50 ms); minus the command time is the
   whole fixed cost of a step, the worker's included.
2. Makespan: a random DAG of 100 chunks (seeded), each `sleep 1`, on 4
   workers, against `make -j4` running the same DAG (goal: within 10%).

Everything runs on 127.0.0.1 as real processes (`distbuild up`'s Network).
Usage: benchmarks/network_bench.py [--steps 40] [--dag 100] [--seed 7]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from distbuild.network import Network  # noqa: E402


def write_definitions(root: Path, chunks: dict[str, list[str]], command: str) -> None:
    """One stratum of chunks (name -> build-depends), each running `command`."""
    (root / "strata" / "bench").mkdir(parents=True)
    (root / "systems").mkdir()
    (root / "VERSION").write_text("version: 8\n")
    (root / "DEFAULTS").write_text("build-systems:\n  manual: {}\n")
    lines = ["name: bench", "kind: stratum", "chunks:"]
    for name, deps in chunks.items():
        (root / "strata" / "bench" / f"{name}.morph").write_text(
            f"name: {name}\nkind: chunk\nbuild-commands:\n- {command}\n")
        lines += [f"- name: {name}", f"  morph: strata/bench/{name}.morph",
                  "  repo: upstream:bench-source", "  ref: master"]
        if deps:
            lines += ["  build-depends:"] + [f"  - {d}" for d in deps]
    (root / "strata" / "bench.morph").write_text("\n".join(lines) + "\n")
    (root / "systems" / "bench.morph").write_text(
        "name: bench\nkind: system\narch: x86_64\nstrata:\n- morph: strata/bench.morph\n")
    subprocess.run(["git", "init", "-q", "-b", "master", str(root)], check=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@127.0.0.1",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@127.0.0.1"}
    subprocess.run(["git", "-C", str(root), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(root), "commit", "-qm", "bench"], check=True, env=env)


def random_dag(n: int, seed: int) -> dict[str, list[str]]:
    """Node i depends on up to three earlier nodes, mostly recent ones: a deep, wide graph."""
    rng = random.Random(seed)
    dag = {}
    for i in range(n):
        pool = list(range(max(0, i - 12), i))
        deps = rng.sample(pool, min(len(pool), rng.choice([0, 1, 1, 2, 2, 3])))
        dag[f"c{i}"] = [f"c{d}" for d in sorted(deps)]
    return dag


def make_makespan(dag: dict[str, list[str]], jobs: int) -> float:
    with tempfile.TemporaryDirectory(prefix="distbuild-make-") as tmp:
        rules = [".PHONY: all " + " ".join(dag), "all: " + " ".join(dag)]
        rules += [f"{name}: {' '.join(deps)}\n\tsleep 1" for name, deps in dag.items()]
        (Path(tmp) / "Makefile").write_text("\n".join(rules) + "\n")
        start = time.monotonic()
        subprocess.run(["make", "-s", f"-j{jobs}", "-C", tmp], check=True)
        return time.monotonic() - start


def critical_path(dag: dict[str, list[str]]) -> int:
    depth: dict[str, int] = {}
    for name, deps in dag.items():
        depth[name] = 1 + max((depth[d] for d in deps), default=0)
    return max(depth.values())


class Bench:
    def __init__(self, root: Path, workers: int):
        self.root = root
        self.net = Network(root / "state", workers=workers)
        self.settings = self.net.start()
        self.config = root / "state" / "network.yaml"
        source = root / "bench-source"
        source.mkdir()
        (source / "README").write_text("benchmark source\n")
        self.net._run_import("delta/bench-source", source, self.config)
        self.env = {**self.net.env, "DISTBUILD_CONFIG": str(self.config)}

    def build(self, definitions: Path, *components: str) -> float:
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "distbuild", "systems/bench.morph",
                               *components], cwd=definitions, env=self.env,
                              capture_output=True, text=True)
        elapsed = time.monotonic() - start
        if proc.returncode != 0:
            raise SystemExit(f"build failed:\n{proc.stdout}\n{proc.stderr}")
        return elapsed

    def attempts(self) -> list[sqlite3.Row]:
        db = sqlite3.connect(self.root / "state" / "controller" / "controller.db")
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM attempts WHERE outcome='built'").fetchall()
        db.close()
        return rows

    def request_seconds(self) -> float:
        db = sqlite3.connect(self.root / "state" / "controller" / "controller.db")
        row = db.execute("SELECT ended - created FROM requests ORDER BY seq DESC LIMIT 1")
        value = row.fetchone()[0]
        db.close()
        return value

    def stop(self) -> None:
        self.net.stop()


def overhead(steps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="distbuild-bench-") as tmp:
        bench = Bench(Path(tmp), workers=2)
        try:
            defs = Path(tmp) / "defs-overhead"
            chunks = {f"t{i}": [] for i in range(steps)}
            write_definitions(defs, chunks, f"true {uuid.uuid4().hex}")
            bench.build(defs, *chunks)
            rows = [r for r in bench.attempts() if r["worker_seconds"] is not None]
            network = [(r["ended"] - r["started"]) - r["worker_seconds"] for r in rows]
            fixed = [(r["ended"] - r["started"]) - r["command_seconds"] for r in rows]
            worker = [r["worker_seconds"] - r["command_seconds"] for r in rows]
            print(f"overhead per step over {len(rows)} steps (ms): network median "
                  f"{statistics.median(network) * 1000:.1f}, p90 "
                  f"{sorted(network)[int(len(network) * 0.9)] * 1000:.1f} (goal: median < 50); "
                  f"worker's own fixed cost median {statistics.median(worker) * 1000:.1f}; "
                  f"whole step minus commands median {statistics.median(fixed) * 1000:.1f}")
        finally:
            bench.stop()


def makespan(n: int, seed: int, workers: int = 4) -> None:
    dag = random_dag(n, seed)
    make = make_makespan(dag, workers)
    with tempfile.TemporaryDirectory(prefix="distbuild-bench-") as tmp:
        bench = Bench(Path(tmp), workers=workers)
        try:
            defs = Path(tmp) / "defs-dag"
            write_definitions(defs, dag, f"sleep 1 # {uuid.uuid4().hex}")
            wall = bench.build(defs, *dag)
            inside = bench.request_seconds()
        finally:
            bench.stop()
    print(f"makespan of a {n}-step DAG of `sleep 1` (critical path {critical_path(dag)} steps, "
          f"seed {seed}), {workers} workers: distbuild {wall:.2f} s as the initiator saw it "
          f"({inside:.2f} s request to finish on the controller), make -j{workers} {make:.2f} s; "
          f"ratio {wall / make:.3f} (goal <= 1.10)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--dag", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", choices=["overhead", "makespan"])
    args = parser.parse_args()
    if args.only in (None, "overhead"):
        overhead(args.steps)
    if args.only in (None, "makespan"):
        makespan(args.dag, args.seed)


if __name__ == "__main__":
    main()

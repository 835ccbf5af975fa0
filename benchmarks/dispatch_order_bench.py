#!/usr/bin/env python3
"""What `distbuild queue` and the farm page pay to ask the scheduler for its order.

`dispatch_order` deep-copies the scheduler and lets the copy dispatch (see
distbuild/dispatchorder.py), so its cost grows with the work held. This
builds R requests of the real 255-step build-system-x86_64 graph (from
../shared/baserock-definitions, each request with its own cache keys, no
workers, so every leaf is ready) and times dispatch_order (a pickle round
trip with the cyclic GC paused, then the copy's dispatch) beside
copy.deepcopy of the same scheduler, the first way it was made. Goal: under
100 ms for 10k steps held; the dashboard asks again only after a change, and
at most once per ten times the last cost, so it never takes more than a
tenth of the reactor.

    .venv/bin/python benchmarks/dispatch_order_bench.py [--requests 1,4,40] [--runs 15]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from distbuild.dispatchorder import dispatch_order  # noqa: E402
from distbuild.scheduling import Scheduler, StepInfo  # noqa: E402

SYSTEM = "systems/build-system-x86_64.morph"


def graph_nodes() -> list[dict]:
    defs = PROJECT.parent / "shared" / "baserock-definitions"
    out = subprocess.run([sys.executable, "-m", "distbuild", "graph", "--definitions",
                          str(defs), "--offline", "--json", SYSTEM], check=True,
                         capture_output=True, text=True, cwd=PROJECT).stdout
    return json.loads(out)["nodes"]


def scheduler_with(nodes: list[dict], requests: int) -> Scheduler:
    sched = Scheduler()
    for r in range(requests):
        steps = [StepInfo(n["id"], f"{n['cache_key'][:60]}{r:04d}", "x86_64",
                          tuple(n["depends"]), 1) for n in nodes]
        sched.add_request(f"r{r}", steps, [nodes[-1]["id"]], set())
    return sched


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", default="1,4,40")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    nodes = graph_nodes()
    print(f"{'requests':>8} {'steps':>7} {'ready':>6} {'deepcopy ms':>12} "
          f"{'dispatch_order ms':>18} {'ratio':>6}")
    for requests in (int(r) for r in args.requests.split(",")):
        sched = scheduler_with(nodes, requests)
        ready = len(dispatch_order(sched))
        floor = median_ms(lambda s=sched: copy.deepcopy(s), args.runs)
        asked = median_ms(lambda s=sched: dispatch_order(s), args.runs)
        print(f"{requests:>8} {len(sched.work):>7} {ready:>6} {floor:>12.1f} {asked:>18.1f} "
              f"{asked / floor:>6.2f}")


if __name__ == "__main__":
    main()

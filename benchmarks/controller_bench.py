#!/usr/bin/env python3
"""The real controller at farm scale: 100 workers over real SSH links, one 10,000-step request.

A trove and a controller start as real processes on 127.0.0.1 (`distbuild
up`'s Network, with no real workers). benchmarks/instant_worker.py then
connects 100 workers (in 4 processes) that build each step at once: they
upload one small artifact with the job's token and report `job-finished`, so
the controller does everything it does for a real build (SQLite writes, the
cache check, messages to the worker and to the attached initiator). The
request is a generated definitions repository: one stratum of N chunks, each
needing up to two of the first 100 (small closures, a wide graph).

Figures: dispatch latency as a worker sees it (job-finished sent -> next
job-run received; the controller's own latency plus SSH both ways), and the
controller process's CPU time (utime + stime from /proc) per step, over the
building phase and over the whole request including graphing.
Goals (issue 11): latency p99 <= 20 ms, CPU per step <= 1 ms.

    .venv/bin/python benchmarks/controller_bench.py [--steps 10000] [--workers 100]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from distbuild.network import Network  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def write_definitions(root: Path, steps: int, seed: int) -> None:
    rng = random.Random(seed)
    (root / "strata").mkdir(parents=True)
    (root / "systems").mkdir()
    (root / "VERSION").write_text("version: 8\n")
    (root / "DEFAULTS").write_text("build-systems:\n  manual: {}\n")
    lines = ["name: farm", "kind: stratum", "chunks:"]
    for i in range(steps - 2):  # the stratum and the system are steps too
        lines += [f"- name: c{i}", "  repo: upstream:bench-source", "  ref: master",
                  "  build-system: manual"]
        if i >= 100:
            deps = rng.sample(range(100), rng.choice([0, 1, 2]))
            if deps:
                lines += ["  build-depends:"] + [f"  - c{d}" for d in sorted(deps)]
    (root / "strata" / "farm.morph").write_text("\n".join(lines) + "\n")
    (root / "systems" / "farm.morph").write_text(
        "name: farm\nkind: system\narch: x86_64\nstrata:\n- morph: strata/farm.morph\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@127.0.0.1",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@127.0.0.1"}
    subprocess.run(["git", "init", "-q", "-b", "master", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(root), "commit", "-qm", "farm"], check=True, env=env)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """(wall time, controller CPU seconds) every 50 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.time(), cpu_seconds(self.pid)))
            self.stop.wait(0.05)

    def cpu_between(self, start: float, end: float) -> float:
        inside = [c for t, c in self.samples if start <= t <= end]
        return inside[-1] - inside[0] if len(inside) > 1 else 0.0


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--py-spy", type=Path, metavar="OUT",
                        help="profile the controller during the request (collapsed stacks)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="controller-bench-") as tmp:
        root = Path(tmp)
        net = Network(root / "state", workers=0)
        settings = net.start()
        fakes: list[subprocess.Popen] = []
        try:
            config = root / "state" / "network.yaml"
            source = root / "bench-source"
            source.mkdir()
            (source / "README").write_text("benchmark source\n")
            net._run_import("delta/bench-source", source, config)
            defs = root / "defs"
            write_definitions(defs, args.steps, args.seed)
            run = json.loads((root / "state" / "run" / "controller.json").read_text())
            pid = run["pid"]
            names = [f"fast-{i}" for i in range(args.workers)]
            outs = []
            for p in range(args.processes):
                out = root / f"fast-{p}.json"
                outs.append(out)
                fakes.append(subprocess.Popen(
                    [sys.executable, str(PROJECT / "benchmarks" / "instant_worker.py"),
                     "--port", str(run["worker_port"]), "--identity", str(net.keys.worker_key),
                     "--known-hosts", str(net.keys.known_hosts),
                     "--cache-url", settings["artifact_cache_url"],
                     "--names", ",".join(names[p::args.processes]), "--out", str(out)],
                    env=net.env))
            log = root / "state" / "logs" / "controller.log"
            deadline = time.monotonic() + 120
            while len(re.findall(r"worker fast-\d+: arch", log.read_text())) < args.workers:
                if time.monotonic() > deadline:
                    raise SystemExit("the instant workers did not all join")
                time.sleep(0.2)
            rss_before = rss_mb(pid)
            sampler = Sampler(pid)
            sampler.start()
            spy = None if args.py_spy is None else subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-r",
                 "200", "-f", "raw", "-o", str(args.py_spy.resolve())],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            start = time.time()
            proc = subprocess.run([sys.executable, "-m", "distbuild", "systems/farm.morph"],
                                  cwd=defs, env={**net.env, "DISTBUILD_CONFIG": str(config)},
                                  capture_output=True, text=True)
            end = time.time()
            sampler.stop.set()
            sampler.join()
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            if proc.returncode != 0:
                raise SystemExit(f"the build failed:\n{proc.stdout[-3000:]}\n{proc.stderr}")
            rss_after = rss_mb(pid)
            for fake in fakes:
                fake.send_signal(signal.SIGTERM)
            for fake in fakes:
                fake.wait(timeout=60)
            results = [json.loads(o.read_text()) for o in outs]
        finally:
            for fake in fakes:
                if fake.poll() is None:
                    fake.kill()
                    fake.wait()
            net.stop()
    latencies = [x for r in results for x in r["latencies"]]
    first = min(r["first"] for r in results if "first" in r)
    last = max(r["last"] for r in results if "last" in r)
    building = sampler.cpu_between(first, last)
    whole = sampler.cpu_between(start, end)
    print(f"{args.steps} steps, {args.workers} instant workers over SSH in {args.processes} "
          f"processes; a shared machine: read medians and ratios")
    print(f"request wall {end - start:.1f} s (building {last - first:.1f} s, "
          f"{args.steps / (last - first):.0f} steps/s)")
    print(f"dispatch latency as the workers saw it, {len(latencies)} gaps: p50 "
          f"{statistics.median(latencies) * 1000:.2f} ms, p99 {ms(latencies, 0.99):.2f} ms, "
          f"max {max(latencies) * 1000:.1f} ms (goal p99 <= 20 ms)")
    print(f"controller CPU per step: building {building / args.steps * 1000:.3f} ms, whole "
          f"request incl. graphing {whole / args.steps * 1000:.3f} ms (goal <= 1 ms)")
    print(f"controller RSS: {rss_before:.0f} MB before the request, {rss_after:.0f} MB after")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

Figures: dispatch latency, from a worker sending `job-finished` to the
controller sending that worker its next `job-run` (the controller records
the send in its attempts table; same clock), and as the workers saw it
(until they had decoded the next `job-run`, which adds their own load); the
controller process's CPU time (utime + stime from /proc) per step, over the
building phase and over the whole request including graphing. Then where
the controller's time went while building, from the record it writes when
DISTBUILD_TURN_TRACE is set (controller/turntrace.py): its reactor turns
(CPU, or waiting for a CPU), its GC passes, and which of them each dispatch
over 20 ms overlapped.
Goals (issue 11): latency p99 <= 20 ms, CPU per step <= 1 ms.

Fair share at that size (--small-at N, default 3000): once N of the big
request's jobs have started, a second initiator builds a 5-step system (a
chain of 3 chunks, its stratum, its system) beside it; the figures are how
soon its first step started, how long it took against its own 5 steps, and
how many big steps started meanwhile.

On this 2-core machine the trove and the instant workers (their SSH and
HTTP) take both cores, and the controller waits for one. On a farm the
controller has its own machine: --controller-core gives it CPU 0 to itself
and everything else the other CPUs, and --controller-nice N runs it at nice N.

With --memory N it instead sends N small requests (5 chunks, a stratum and a
system each, every request its own cache keys) over a real initiator link,
4 at a time, and prints the controller's RSS after the first 10 and every
100 after. Goal: after 1,000, within 10% of after the first ten.

    .venv/bin/python benchmarks/controller_bench.py [--steps 10000] [--workers 100]
    .venv/bin/python benchmarks/controller_bench.py --memory 1000 --workers 8
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from distbuild.initiator import snapshot  # noqa: E402
from distbuild.link import connect  # noqa: E402
from distbuild.network import Network  # noqa: E402
from distbuild.protocol import messages as m  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def write_definitions(root: Path, steps: int, seed: int) -> None:
    rng = random.Random(seed)
    _start_definitions(root)
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
    lines = ["name: small", "kind: stratum", "chunks:"]
    for i in range(SMALL_CHAIN):
        lines += [f"- name: s{i}", "  repo: upstream:bench-source", "  ref: master",
                  "  build-system: manual"] + (["  build-depends:", f"  - s{i - 1}"] if i else [])
    (root / "strata" / "small.morph").write_text("\n".join(lines) + "\n")
    (root / "systems" / "small.morph").write_text(
        "name: small\nkind: system\narch: x86_64\nstrata:\n- morph: strata/small.morph\n")
    _commit(root)


def write_small_systems(root: Path, count: int) -> None:
    """`count` systems of one stratum of 5 chunks each, no key shared between them."""
    _start_definitions(root)
    for n in range(count):
        lines = [f"name: m{n}", "kind: stratum", "chunks:"]
        for i in range(5):
            lines += [f"- name: m{n}c{i}", "  repo: upstream:bench-source", "  ref: master",
                      "  build-system: manual"]
        (root / "strata" / f"m{n}.morph").write_text("\n".join(lines) + "\n")
        (root / "systems" / f"m{n}.morph").write_text(
            f"name: m{n}\nkind: system\narch: x86_64\nstrata:\n- morph: strata/m{n}.morph\n")
    _commit(root)


def _start_definitions(root: Path) -> None:
    (root / "strata").mkdir(parents=True)
    (root / "systems").mkdir()
    (root / "VERSION").write_text("version: 8\n")
    (root / "DEFAULTS").write_text("build-systems:\n  manual: {}\n")


def _commit(root: Path) -> None:
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


class Farm:
    """A trove and a controller (`Network` with no real workers), and instant workers."""

    def __init__(self, root: Path, workers: int, processes: int, nice: int = 0,
                 own_core: bool = False, controller_nice: int = 0):
        self.root = root
        self.net = Network(root / "state", workers=0)
        self.settings = self.net.start()
        others = pin_controller_alone(self.net) if own_core else None
        if controller_nice:
            for task in Path(f"/proc/{self.net.supervisor.pids()['controller']}/task").iterdir():
                os.setpriority(os.PRIO_PROCESS, int(task.name), controller_nice)
        self.fakes: list[subprocess.Popen] = []
        self.config = root / "state" / "network.yaml"
        source = root / "bench-source"
        source.mkdir()
        (source / "README").write_text("benchmark source\n")
        self.net._run_import("delta/bench-source", source, self.config)
        run = json.loads((root / "state" / "run" / "controller.json").read_text())
        self.pid = run["pid"]
        names = [f"fast-{i}" for i in range(workers)]
        self.outs = [root / f"fast-{p}.json" for p in range(processes)]
        for p, out in enumerate(self.outs):
            self.fakes.append(subprocess.Popen(
                [sys.executable, str(PROJECT / "benchmarks" / "instant_worker.py"),
                 "--port", str(run["worker_port"]), "--identity", str(self.net.keys.worker_key),
                 "--known-hosts", str(self.net.keys.known_hosts),
                 "--cache-url", self.settings["artifact_cache_url"],
                 "--names", ",".join(names[p::processes]), "--out", str(out)],
                env=self.net.env, preexec_fn=lambda: start_worker(nice, others)))
        log = root / "state" / "logs" / "controller.log"
        deadline = time.monotonic() + 120
        while len(re.findall(r"worker fast-\d+: arch", log.read_text())) < workers:
            if time.monotonic() > deadline:
                raise SystemExit("the instant workers did not all join")
            time.sleep(0.2)

    def worker_results(self) -> list[dict]:
        for fake in self.fakes:
            fake.send_signal(signal.SIGTERM)
        for fake in self.fakes:
            fake.wait(timeout=60)
        return [json.loads(o.read_text()) for o in self.outs]

    def stop(self) -> None:
        for fake in self.fakes:
            if fake.poll() is None:
                fake.kill()
                fake.wait()
        self.net.stop()


def pin_controller_alone(net: Network) -> set[int]:
    """Give the controller CPU 0 to itself, as if on its own machine; the rest get the others.

    Every thread of the controller is pinned (threads it starts later inherit
    that), then every other process of the network and this benchmark.
    Returns the CPUs left for the rest.
    """
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        raise SystemExit("--controller-core needs at least 2 CPUs")
    mine, others = min(cpus), cpus - {min(cpus)}
    pids = net.supervisor.pids()
    controller = pids.pop("controller")
    for task in Path(f"/proc/{controller}/task").iterdir():
        os.sched_setaffinity(int(task.name), {mine})
    for pid in [*pids.values(), os.getpid()]:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task.name), others)
    return others


def start_worker(nice: int, cpus: set[int] | None) -> None:
    """In an instant-worker child before exec: its niceness and, if given, its CPUs."""
    if nice:
        os.nice(nice)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


@contextlib.contextmanager
def farm(workers: int, processes: int, nice: int = 0, own_core: bool = False,
         controller_nice: int = 0):
    with tempfile.TemporaryDirectory(prefix="controller-bench-") as tmp:
        f = Farm(Path(tmp), workers, processes, nice, own_core, controller_nice)
        try:
            yield f
        finally:
            f.stop()


def one_big_request(args) -> None:
    trace_fd, trace_name = tempfile.mkstemp(prefix="controller-turns-", suffix=".json")
    os.close(trace_fd)
    os.environ["DISTBUILD_TURN_TRACE"] = trace_name  # read by the controller at start
    try:
        _one_big_request(args, Path(trace_name))
    finally:
        os.environ.pop("DISTBUILD_TURN_TRACE", None)
        Path(trace_name).unlink(missing_ok=True)


def _one_big_request(args, trace_file: Path) -> None:
    with farm(args.workers, args.processes, args.worker_nice, args.controller_core,
              args.controller_nice) as f:
        defs = f.root / "defs"
        write_definitions(defs, args.steps, args.seed)
        rss_before = rss_mb(f.pid)
        load_before = f"{os.getloadavg()[0]:.2f}"
        sampler = Sampler(f.pid)
        sampler.start()
        spy = None if args.py_spy is None else subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(f.pid), "-r",
             "200", "-f", "raw", "-o", str(args.py_spy.resolve())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = {**f.net.env, "DISTBUILD_CONFIG": str(f.config)}
        out = f.root / "initiator.out"
        start = time.time()
        with out.open("w") as sink:
            big = subprocess.Popen([sys.executable, "-m", "distbuild", "systems/farm.morph"],
                                   cwd=defs, env=env, stdout=sink, stderr=subprocess.STDOUT)
            small = send_small_request(f, defs, env, big, args.small_at) if args.small_at \
                else None
            big.wait()
        end = time.time()
        sampler.stop.set()
        sampler.join()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        if big.returncode != 0:
            raise SystemExit(f"the build failed:\n{out.read_text()[-3000:]}")
        rss_after = rss_mb(f.pid)
        results = f.worker_results()
        db = sqlite3.connect(f.root / "state" / "controller" / "controller.db")
        try:
            attempts = db.execute("SELECT job, worker, started FROM attempts ORDER BY worker, "
                                  "started").fetchall()
            durations = db.execute("SELECT started, ended - started FROM attempts WHERE "
                                   "ended IS NOT NULL").fetchall()
            if small is not None:
                small.update(small_request_times(db))
        finally:
            db.close()
    latencies = [x for r in results for x in r["latencies"]]
    finished = {job: t for r in results for job, t in r["finished"].items()}
    gaps = [(finished[a[0]], b[2] - finished[a[0]]) for a, b in itertools.pairwise(attempts)
            if a[1] == b[1] and a[0] in finished]
    dispatch = [gap for _, gap in gaps]
    # A slot freed near the end waits for steps that are not ready yet (the
    # last chunks, then the stratum, then the system): that is the graph, not
    # dispatch. Count the gaps where at least one job per worker was still to
    # start after the slot was freed, so ready work was waiting.
    starts = sorted(a[2] for a in attempts)
    busy_at = [(t, gap) for t, gap in gaps
               if len(starts) - bisect.bisect_right(starts, t) >= args.workers]
    busy = [gap for _, gap in busy_at]
    first = min(r["first"] for r in results if "first" in r)
    last = max(r["last"] for r in results if "last" in r)
    building = sampler.cpu_between(first, last)
    whole = sampler.cpu_between(start, end)
    print(f"{args.steps} steps, {args.workers} instant workers over SSH in {args.processes} "
          f"processes at nice {args.worker_nice}"
          f"{'; the controller alone on CPU 0' if args.controller_core else ''}"
          f"{f'; the controller at nice {args.controller_nice}' if args.controller_nice else ''}; "
          f"load average {load_before} before, "
          f"{os.getloadavg()[0]:.2f} after; a shared machine: read medians and ratios")
    print(f"request wall {end - start:.1f} s (building {last - first:.1f} s, "
          f"{args.steps / (last - first):.0f} steps/s)")
    print(f"dispatch latency, job-finished sent -> next job-run sent, while work was queued, "
          f"{len(busy)} gaps: p50 {statistics.median(busy) * 1000:.2f} ms, p99 "
          f"{ms(busy, 0.99):.2f} ms, max {max(busy) * 1000:.1f} ms (goal p99 <= 20 ms)")
    print(f"  all {len(dispatch)} gaps, the end of the graph included: p50 "
          f"{statistics.median(dispatch) * 1000:.2f} ms, p99 {ms(dispatch, 0.99):.2f} ms, "
          f"max {max(dispatch) * 1000:.1f} ms")
    print(f"  as the workers saw it, {len(latencies)} gaps: p50 "
          f"{statistics.median(latencies) * 1000:.2f} ms, p99 {ms(latencies, 0.99):.2f} ms, "
          f"max {max(latencies) * 1000:.1f} ms")
    print(f"controller CPU per step: building {building / args.steps * 1000:.3f} ms, whole "
          f"request incl. graphing {whole / args.steps * 1000:.3f} ms (goal <= 1 ms)")
    print(f"controller RSS: {rss_before:.0f} MB before the request, {rss_after:.0f} MB after")
    if small is not None:
        print_small(small, durations)
    print_turns(trace_file, first, last, busy_at)


SMALL_CHAIN = 3  # chunks, each needing the one before; with its stratum and system, 5 steps


def send_small_request(f: Farm, defs: Path, env: dict, big: subprocess.Popen,
                       after: int) -> dict:
    """Once `after` of the big request's jobs have started, build the small system; its times."""
    db_path = f.root / "state" / "controller" / "controller.db"
    while big.poll() is None:
        db = sqlite3.connect(db_path)
        try:
            started = db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
        finally:
            db.close()
        if started >= after:
            break
        time.sleep(0.05)
    else:
        raise SystemExit("the big request ended before the small one was sent")
    sent = time.time()
    proc = subprocess.run([sys.executable, "-m", "distbuild", "systems/small.morph"],
                          cwd=defs, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the small request failed:\n{proc.stdout[-3000:]}\n{proc.stderr}")
    return {"after": after, "sent": sent, "done": time.time(),
            "big_running": big.poll() is None}


def small_request_times(db: sqlite3.Connection) -> dict:
    created, ended, rid = db.execute("SELECT created, ended, id FROM requests WHERE system "
                                     "LIKE '%small.morph'").fetchone()
    jobs = db.execute("SELECT started, ended FROM attempts WHERE request_id=? ORDER BY started",
                      (rid,)).fetchall()
    big_during = db.execute("SELECT COUNT(*) FROM attempts WHERE request_id != ? AND started "
                            "BETWEEN ? AND ?", (rid, created, ended)).fetchone()[0]
    return {"created": created, "ended": ended, "jobs": jobs, "big_during": big_during}


def print_small(small: dict, durations: list) -> None:
    """The fair-share figures: how soon the small request started and how long it took."""
    created, jobs = small["created"], small["jobs"]
    # One step's time, as the big request's steps took it around then: started -> ended.
    around = [d for t, d in durations if created - 5 <= t <= small["ended"] + 5]
    step = statistics.median(around)
    print(f"fair share: a {len(jobs)}-step request sent after {small['after']} of the big "
          f"one's jobs had started; its first step started "
          f"{(jobs[0][0] - created) * 1000:.1f} ms after the controller had it, its graphing "
          f"included (one step takes "
          f"{step * 1000:.1f} ms, median of the big request's then); it ended "
          f"{(small['ended'] - created) * 1000:.0f} ms after, its own critical path of "
          f"{len(jobs)} steps {sum(e - s for s, e in jobs) * 1000:.0f} ms of job time; "
          f"{small['big_during']} big steps started meanwhile; whole initiator command "
          f"{small['done'] - small['sent']:.2f} s; the big request "
          f"{'still ran' if small['big_running'] else 'had ended'} when it returned")


def print_turns(trace_file: Path, first: float, last: float,
                busy_at: list[tuple[float, float]]) -> None:
    """Where the controller's time went while building: its reactor's turns, the GC's passes."""
    if not trace_file.stat().st_size:
        print("controller turns: no record (the controller did not stop cleanly)")
        return
    trace = json.loads(trace_file.read_text())
    turns = [t for t in trace["turns"] if first <= t[0] <= last]
    long = [t for t in turns if t[1] > 0.020]
    print(f"controller reactor while building: {len(turns)} turns, longest "
          f"{max(t[1] for t in turns) * 1000:.1f} ms; {len(long)} over 20 ms, in them "
          f"{sum(t[2] for t in long):.2f} s of CPU and {sum(t[3] for t in long):.2f} s "
          f"waiting for a CPU (all turns: {sum(t[2] for t in turns):.2f} s CPU, "
          f"{sum(t[3] for t in turns):.2f} s waiting)")
    passes = [p for p in trace["gc"] if first <= p[0] <= last]
    young = [p[2] for p in passes if p[1] < 2]
    full = [p[2] for p in passes if p[1] == 2]
    print(f"  GC passes while building: {len(young)} young (longest "
          f"{max(young, default=0) * 1000:.1f} ms), {len(full)} full (longest "
          f"{max(full, default=0) * 1000:.1f} ms)")
    # What the slow dispatches (over 20 ms) overlapped: a full GC pass, or a long turn
    # that was mostly the controller's CPU, mostly waiting for one, or mostly neither
    # (blocked: on the disk, or on the GIL held by another of its threads).
    slow = [(t, t + gap) for t, gap in busy_at if gap > 0.020]

    def mostly(turn) -> str:
        blocked = turn[1] - turn[2] - turn[3]
        return max((turn[2], "CPU"), (turn[3], "waiting for a CPU"), (blocked, "blocked"))[1]

    spans = {"a full GC pass": [(p[0], p[0] + p[2]) for p in passes if p[1] == 2]}
    for what in ("CPU", "waiting for a CPU", "blocked"):
        spans[f"a long turn, mostly {what}"] = [(t[0], t[0] + t[1]) for t in long
                                               if mostly(t) == what]
    parts = []
    for what, found in spans.items():
        hit = sum(1 for a, b in slow if any(x < b and y > a for x, y in found))
        parts.append(f"{hit} {what}")
    print(f"  the {len(slow)} dispatches over 20 ms overlapped: {', '.join(parts)}")


def many_small_requests(args) -> None:
    with farm(args.workers, args.processes) as f:
        defs = f.root / "defs"
        write_small_systems(defs, args.memory)
        s = f.settings
        snap = snapshot.take(defs)
        snapshot.push(snap, s["definitions_repo"], s["trove_ssh_url"], Path(s["identity"]),
                      Path(s["known_hosts"]))
        url = f"{s['trove_git_url'].rstrip('/')}/{s['definitions_repo']}"
        pending = list(range(args.memory))
        done = 0
        figures = []
        links = [connect("127.0.0.1", s["controller_initiator_port"], Path(s["identity"]),
                         Path(s["known_hosts"]), "initiator", f"bench-{i}") for i in range(4)]

        def submit(link) -> None:
            n = pending.pop(0)
            link.send(m.BuildRequest(definitions_repo=url, definitions_commit=snap.commit,
                                     system=f"systems/m{n}.morph"))

        start = time.time()
        for link in links:
            submit(link)
        busy = set(range(len(links)))
        while busy:
            for i in list(busy):
                message = links[i].receive(timeout=0.01)
                if isinstance(message, (m.BuildFailed, m.Error)):
                    raise SystemExit(f"a request failed: {message}")
                if not isinstance(message, m.BuildFinished):
                    continue
                done += 1
                if done == 10 or done % 100 == 0:
                    figures.append((done, rss_mb(f.pid), time.time() - start))
                if pending:
                    submit(links[i])
                else:
                    busy.discard(i)
        for link in links:
            link.close()
    print(f"{args.memory} requests of 7 steps each, 4 at a time, {args.workers} instant "
          "workers; controller RSS:")
    for n, rss, t in figures:
        print(f"  after {n:>5} requests: {rss:6.1f} MB  ({t:.0f} s)")
    first = next(rss for n, rss, _ in figures if n == 10)
    print(f"after {figures[-1][0]} vs after 10: {figures[-1][1] / first:.3f}x (goal <= 1.10)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--worker-nice", type=int, default=0, metavar="N",
                        help="run the instant workers at nice N: on a real farm they are other "
                             "machines, here they share the controller's cores")
    parser.add_argument("--controller-core", action="store_true",
                        help="give the controller CPU 0 to itself and the trove, the instant "
                             "workers and this script the other CPUs: on a real farm the "
                             "controller has its own machine")
    parser.add_argument("--controller-nice", type=int, default=0, metavar="N",
                        help="run the controller (every thread) at nice N (below 0 needs root)")
    parser.add_argument("--small-at", type=int, default=3000, metavar="N",
                        help="once N of the big request's jobs have started, build a 5-step "
                             "system beside it (fair share); 0: none")
    parser.add_argument("--memory", type=int, metavar="N",
                        help="send N small requests and follow the controller's RSS instead")
    parser.add_argument("--py-spy", type=Path, metavar="OUT",
                        help="profile the controller during the request (collapsed stacks)")
    args = parser.parse_args()
    if args.memory:
        many_small_requests(args)
    else:
        one_big_request(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

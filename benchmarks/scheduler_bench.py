#!/usr/bin/env python3
"""Scheduler cost per call at farm scale, the new scheduler beside the old one (issue 11).

Drives `distbuild.scheduling.Scheduler` directly, with no I/O: N steps queued
across 100 requests (random DAGs, each request also holding a small shared
base), 500 one-slot workers. Every call is timed: a worker joining, a request
added, a slot freed, a step finished or failed, a worker leaving. Workers
finish their jobs in the order they got them; every 2,000 completions a
worker leaves and rejoins, and a few steps fail (each fails its request).
Each request is planned (`plan_request`, which the controller runs in its
planning thread, with its look at the keys held) just before it is added;
that is timed apart. The first requests land on idle workers and start
their ready steps in the call: the report also gives the calls that start
no job, and the cost per job started. A call starts at most START_LIMIT
jobs; the rest start in the `dispatch` calls that follow it ("more
dispatch"), as the controller makes them on its next turns. `--clock cpu`
times by the thread's CPU time, steadier on a machine busy with other work.

The baseline is the scheduler as it was before issue 11, loaded from git
(`--baseline-rev`), run in the same process on the same input. It looks at
every step on every call, so at 30k and 100k it runs only for
`--baseline-budget` seconds and its figures cover the calls it managed.
Goal: every call type p99 <= 0.5 ms at 100k, and the drain linear in N.

`--labels` adds a run of the new scheduler with worker labels (issue 14): one
step in 10 needs `big`, one in 20 needs `big` and `kvm`; one worker in 10 has
`big`, one in 20 both. The pools and groups are few, so it should cost about
what the unlabelled run does.

    .venv/bin/python benchmarks/scheduler_bench.py [--sizes 10000,30000,100000]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from distbuild import scheduling  # noqa: E402
from distbuild.scheduling import JobStarted, StepInfo  # noqa: E402

REQUESTS = 100
WORKERS = 500
SHARED = 20  # steps every request's graph holds (a base stratum)


LABELS = (frozenset(), frozenset({"big"}), frozenset({"big", "kvm"}))


def label_of(i: int, labelled: bool) -> frozenset[str]:
    """Step or worker i's labels in a `--labels` run: 1 in 10 big, 1 in 20 big and kvm."""
    if not labelled:
        return LABELS[0]
    return LABELS[2] if i % 20 == 0 else LABELS[1] if i % 10 == 5 else LABELS[0]


def request_steps(r: int, n: int, rng: random.Random,
                  labelled: bool = False) -> tuple[list[StepInfo], list[str]]:
    """n steps of its own plus the shared base: each depends on up to 3 of the previous 50."""
    deps: dict[str, tuple[str, ...]] = {}
    order = [f"base{i}" for i in range(SHARED)]
    for i in range(SHARED):
        deps[f"base{i}"] = (f"base{i - 1}",) if i else ()
    for i in range(n):
        pool = order[max(0, len(order) - 50):]
        nid = f"r{r}-{i}"
        deps[nid] = tuple(sorted(rng.sample(pool, min(len(pool), rng.choice([0, 1, 2, 3])))))
        order.append(nid)
    remaining: dict[str, int] = {}
    dependents = defaultdict(list)
    for nid in order:
        for d in deps[nid]:
            dependents[d].append(nid)
    for nid in reversed(order):
        remaining[nid] = 1 + max((remaining[d] for d in dependents[nid]), default=0)
    steps = [StepInfo(nid, nid if nid.startswith("base") else f"k-{nid}", "x86_64",
                      deps[nid], remaining[nid],
                      *((label_of(i, True),) if labelled and i >= SHARED else ()))
             for i, nid in enumerate(order)]
    targets = [nid for nid in order if not dependents[nid]]
    return steps, targets


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


class Timer:
    def __init__(self, budget: float | None, clock=time.perf_counter):
        self.clock = clock
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.others: dict[str, list[float]] = defaultdict(list)
        self.full_gc_in: dict[str, int] = defaultdict(int)
        self.jobs_started: list[int] = []  # by each "request added" call, in order
        self.budget = budget
        self.spent = 0.0
        self.gc_seconds, self.gc_full = 0.0, 0
        self._gc_start = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = self.clock()
        else:
            self.gc_seconds += self.clock() - self._gc_start
            self.gc_full += info["generation"] == 2

    def __call__(self, kind: str, fn, *args):
        full = self.gc_full
        start = self.clock()
        out = fn(*args)
        elapsed = self.clock() - start
        if self.gc_full != full:
            self.full_gc_in[kind] += 1  # a full pass ran inside this call (counted in it)
        self.calls[kind].append(elapsed)
        self.spent += elapsed
        return out

    def outside(self, kind: str, fn, *args):
        """Time a call that is not the scheduler's: reported, but not in its totals."""
        start = self.clock()
        out = fn(*args)
        self.others[kind].append(self.clock() - start)
        return out

    @property
    def out_of_time(self) -> bool:
        return self.budget is not None and self.spent > self.budget


def drive(module, total: int, seed: int, budget: float | None,
          labelled: bool = False, clock=time.perf_counter) -> tuple[Timer, int, bool]:
    """Queue `total` steps, then drain them; returns the timings and the steps built."""
    rng = random.Random(seed)
    sched = module.Scheduler(retry_limit=2)
    timer = Timer(budget, clock)
    new_api = hasattr(module, "PRIORITIES")
    running: deque[JobStarted] = deque()

    def note(events) -> int:
        """Keep the jobs a call started; returns how many. A call that stopped at its share
        of starts is followed by the `dispatch` calls the controller makes next turn."""
        before = len(running)
        running.extend(e for e in events if type(e).__name__ == "JobStarted")
        started = len(running) - before
        while events and type(events[-1]).__name__ == "DispatchPending":
            events = timer("more dispatch", sched.dispatch)
            running.extend(e for e in events if type(e).__name__ == "JobStarted")
        return started

    def labels(w: str) -> tuple:
        return (label_of(int(w[1:]), True),) if labelled else ()

    for w in range(WORKERS):
        note(timer("worker joins", sched.add_worker, f"w{w}", "x86_64", 1, (),
                   *labels(f"w{w}")) if labelled else
             timer("worker joins", sched.add_worker, f"w{w}", "x86_64", 1))
    plans = [request_steps(r, total // REQUESTS, rng, labelled) for r in range(REQUESTS)]
    fail_at = {rng.randrange(total // 2) for _ in range(3)}
    gc.collect()
    for r, (steps, targets) in enumerate(plans):
        args = (f"req{r}", steps, targets, set()) + (("normal",) if new_api else ())
        if hasattr(module, "plan_request"):
            # The per-step work, done before the scheduler call (the controller does it
            # in its planning thread), with the look at which keys the scheduler holds
            # already where the scheduler takes that: timed on its own.
            ahead = (sched.work,) if hasattr(module, "WorkIndex") else ()
            planned = timer.outside("request planned", module.plan_request, *args, *ahead)
            timer.jobs_started.append(note(timer("request added", sched.add_planned, planned)))
        else:
            timer.jobs_started.append(note(timer("request added", sched.add_request, *args)))
        if timer.out_of_time:
            return timer, 0, False
    del plans
    done = 0
    while running:
        job = running.popleft()
        if job.job not in sched.jobs:
            continue  # cancelled: its request failed
        note(timer("slot freed", sched.release_slot, job.job))
        if done in fail_at:
            note(timer("step failed", sched.job_failed, job.job, "benchmark failure"))
        else:
            note(timer("step finished", sched.job_finished, job.job))
        done += 1
        if done % 2000 == 0:
            victim = f"w{rng.randrange(WORKERS)}"
            lost = [j for j in running if j.worker == victim]
            note(timer("worker leaves", sched.remove_worker, victim, "benchmark"))
            running = deque(j for j in running if j not in lost)
            note(timer("worker joins", sched.add_worker, victim, "x86_64", 1, (),
                       *labels(victim)) if labelled else
                 timer("worker joins", sched.add_worker, victim, "x86_64", 1))
        if timer.out_of_time:
            return timer, done, False
    return timer, done, True


def load_baseline(rev: str):
    text = subprocess.run(["git", "-C", str(PROJECT), "show", f"{rev}:distbuild/scheduling.py"],
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="sched-baseline-")) / "old_scheduling.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_scheduling", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_scheduling"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def report(label: str, total: int, timer: Timer, done: int, complete: bool,
           wall: float) -> None:
    every = [t for ts in timer.calls.values() for t in ts]
    state = "drained" if complete else f"stopped after {done} steps (time budget)"
    print(f"{label:4} {total:>7} steps: {state}; {len(every)} calls, scheduler time "
          f"{timer.spent:.2f} s (of which Python's cyclic GC {timer.gc_seconds:.2f} s, "
          f"{timer.gc_full} full collections), wall {wall:.2f} s; all calls p50 "
          f"{statistics.median(every) * 1000:.3f} ms, p99 {ms(every, 0.99):.3f} ms, "
          f"max {max(every) * 1000:.2f} ms")
    for kind, ts in timer.calls.items():
        full = timer.full_gc_in.get(kind)
        print(f"       {kind:15} n={len(ts):>6}  p50 {statistics.median(ts) * 1000:7.3f} ms  "
              f"p99 {ms(ts, 0.99):7.3f} ms  max {max(ts) * 1000:8.2f} ms"
              + (f"  ({full} with a full GC pass)" if full else ""))
    adds = timer.calls.get("request added", [])
    idle = [t for t, n in zip(adds, timer.jobs_started, strict=True) if n == 0]
    busy = [(t, n) for t, n in zip(adds, timer.jobs_started, strict=True) if n]
    if busy:
        # The first requests land on idle workers and start their ready steps in the
        # call: that part costs per job started, not per step queued.
        print(f"         of which starting no job: n={len(idle)}, p50 "
              f"{statistics.median(idle or [0]) * 1000:.3f} ms, max "
              f"{max(idle or [0]) * 1000:.3f} ms; starting jobs: n={len(busy)}, up to "
              f"{max(n for _, n in busy)} jobs in one call, "
              f"max {max(t for t, _ in busy) * 1000:.3f} ms, "
              f"{sum(t for t, _ in busy) / sum(n for _, n in busy) * 1e6:.1f} us per job started")
    for kind, ts in timer.others.items():
        print(f"       {kind:15} n={len(ts):>6}  p50 {statistics.median(ts) * 1000:7.3f} ms  "
              f"p99 {ms(ts, 0.99):7.3f} ms  max {max(ts) * 1000:8.2f} ms  (pure, before "
              f"the scheduler call; total {sum(ts):.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--baseline-rev", default="14d05d2",
                        help="git revision whose scheduler is the baseline (default: before #11)")
    parser.add_argument("--baseline-budget", type=float, default=20.0,
                        help="seconds of scheduler time the baseline gets per size")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--labels", action="store_true",
                        help="also run the new scheduler with worker labels")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="time calls by the wall clock, or by this thread's CPU time "
                             "(steadier on a machine busy with other work)")
    parser.add_argument("--one", nargs=2, metavar=("LABEL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        # One scheduler at one size per process: no heap left over from the run before.
        label, total = args.one[0], int(args.one[1])
        module = scheduling if label in ("new", "lab") else load_baseline(args.baseline_rev)
        start = time.perf_counter()
        timer, done, complete = drive(module, total, args.seed,
                                      None if label != "old" else args.baseline_budget,
                                      labelled=label == "lab", clock=CLOCKS[args.clock])
        report(label, total, timer, done, complete, time.perf_counter() - start)
        print(f"per step: {timer.spent / total * 1e6:.1f} us")
        return
    print(f"{REQUESTS} requests, {WORKERS} one-slot workers, seed {args.seed}, {args.clock} "
          f"clock; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; the machine "
          "may be shared with other work, so read ratios and medians")
    per_step = {}
    for total in (int(s) for s in args.sizes.split(",")):
        labels = ("new",) + (() if args.no_baseline else ("old",)) + (
            ("lab",) if args.labels else ())
        for label in labels:
            out = subprocess.run(
                [sys.executable, __file__, "--one", label, str(total), "--seed", str(args.seed),
                 "--clock", args.clock,
                 "--baseline-rev", args.baseline_rev,
                 "--baseline-budget", str(args.baseline_budget)],
                check=True, capture_output=True, text=True).stdout
            lines = out.splitlines()
            print("\n".join(lines[:-1]), flush=True)
            if label == "new":
                per_step[total] = lines[-1].split(": ", 1)[1]
    print("new scheduler time per step queued: " + ", ".join(
        f"{n}: {t}" for n, t in per_step.items()) + " (a linear drain keeps these flat)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Real-size staging and system assembly (issue 16), on a `distbuild up` network.

200 chunks each install 250 files of 4 KiB (2 KiB random, 2 KiB text: about
2:1 under gzip, like binaries) under /usr/share/NAME, all in one artifact
per chunk: 50,000 files, 200 MB. A chunk `stage` build-depends on all of
them and runs `true`; the system assembles all 201 chunks. 2 workers, one
slot each, as the issue measured. The whole build runs twice, on two new
networks: first with the workers' `prefetch` off (the cold path: the
staging chunk's worker downloads and unpacks the other worker's ~100
artifacts while the step waits), then as a user runs it, with prefetch on
(each worker fetches what the other built while its own steps run).
Printed for each, as the initiator reports them (the worker's step time,
which the initiator prints as "Finished building ... in N s"; read here
from the controller's records, to the millisecond):

- the staging chunk's step (goal <= 1.0 s) and the system's (goal <= 3.0 s),
  with the steps' own log lines: the system's packing with the worker's CPU
  for it, and its timeline (when each phase began, and the step's end);
- with a second staging chunk built afterwards (a new request), the step
  when every tree is already unpacked on its worker;
- each worker's peak RSS during the build above its idle RSS (goal: the
  assembling worker <= 150 MB);
- for reference, side by side (once): GNU tar unpacking the same 200
  tarballs (one `tar -xzf` each), and `tar -czf` packing the assembled tree.

Usage: benchmarks/staging_bench.py [--chunks 200] [--files 250] [--only cold|prefetch]
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "benchmarks"))

from network_bench import Bench, commit_definitions  # noqa: E402

from distbuild.network import Network  # noqa: E402

GENERATOR = '''\
import os, random, sys
name, files = sys.argv[1], int(sys.argv[2])
rng = random.Random(name)
root = os.path.join(os.environ["DESTDIR"], "usr/share", name)
for i in range(files):
    d = os.path.join(root, f"d{i % 10}")
    os.makedirs(d, exist_ok=True)
    text = (f"{name} file {i} " * 200).encode()[:2048]
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(rng.randbytes(2048) + text)
'''


def write_definitions(root: Path, chunks: int, files: int, stage_names: list[str]) -> None:
    for d in ("strata/deps", "strata/top", "systems"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "VERSION").write_text("version: 8\n")
    (root / "DEFAULTS").write_text("build-systems:\n  manual: {}\n")
    lines = ["name: deps", "kind: stratum", "chunks:"]
    for i in range(chunks):
        name = f"d{i}"
        (root / "strata/deps" / f"{name}.morph").write_text(
            f"name: {name}\nkind: chunk\ninstall-commands:\n- python3 gen.py {name} {files}\n")
        lines += [f"- name: {name}", f"  morph: strata/deps/{name}.morph",
                  "  repo: upstream:bench-staging", "  ref: master"]
    (root / "strata/deps.morph").write_text("\n".join(lines) + "\n")
    lines = ["name: top", "kind: stratum", "build-depends:", "- morph: strata/deps.morph",
             "chunks:"]
    for name in stage_names:
        (root / "strata/top" / f"{name}.morph").write_text(
            f"name: {name}\nkind: chunk\nbuild-commands:\n- \"true\"\n")
        lines += [f"- name: {name}", f"  morph: strata/top/{name}.morph",
                  "  repo: upstream:bench-staging", "  ref: master"]
    (root / "strata/top.morph").write_text("\n".join(lines) + "\n")
    (root / "systems/bench.morph").write_text(
        "name: bench\nkind: system\narch: x86_64\nstrata:\n- morph: strata/deps.morph\n"
        "- morph: strata/top.morph\n")
    commit_definitions(root)


class RssWatch:
    """Samples the workers' RSS every 50 ms; idle is the first sample."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.idle = {name: self._rss(pid) for name, pid in pids.items()}
        self.peak = dict(self.idle)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    @staticmethod
    def _rss(pid: int) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _loop(self) -> None:
        while not self.stop.wait(0.05):
            for name, pid in self.pids.items():
                try:
                    self.peak[name] = max(self.peak[name], self._rss(pid))
                except OSError:
                    pass

    def done(self) -> dict[str, tuple[int, int]]:
        self.stop.set()
        self.thread.join()
        return {n: (self.idle[n], self.peak[n]) for n in self.pids}


def gnu_tar_figures(work_dirs: list[Path], tmp: Path, prefix: str) -> tuple[float, float]:
    """Seconds for `tar -xzf` of each chunk artifact, and `tar -czf` of the result."""
    tarballs = {}
    for work in work_dirs:
        for path in (work / "artifacts").glob("*.chunk.d*-misc"):
            tarballs.setdefault(path.name, path)
    dest = tmp / f"{prefix}-gnu-tar"
    dest.mkdir()
    started = time.monotonic()
    for path in tarballs.values():
        subprocess.run(["tar", "-xzf", str(path), "-C", str(dest)], check=True)
    unpack = time.monotonic() - started
    started = time.monotonic()
    subprocess.run(["tar", "-czf", str(tmp / f"{prefix}.tgz"), "-C", str(dest), "."],
                   check=True)
    return unpack, time.monotonic() - started


def step_phases(work_dirs: list[Path], chunks: int) -> list[str]:
    """The staging and system steps' own timing lines, from their build logs."""
    wanted = ("staged ", "assembled ", "-rootfs: ")
    lines = []
    for work in work_dirs:
        for log in sorted(work.glob("**/*.build-log")):
            text = log.read_text(errors="replace")
            if f"staged {chunks} " not in text and "assembled " not in text:
                continue
            lines += [line.strip() for line in text.splitlines()
                      if any(w in line for w in wanted) and "staged 0 " not in line]
            if "assembled " in text:
                lines.append(timeline(text))
    return lines


def timeline(text: str) -> str:
    """When each phase of a step began, in seconds from its first log line."""
    marks = []
    for line in text.splitlines():
        stamp, _, what = line.partition(" ")
        if what.startswith(("Building ", "=== ", "Finished ")) or "-rootfs: " in what:
            when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            name = what.split()[0] if not what.startswith("===") else what.split()[1]
            marks.append((when, "packed" if "-rootfs: " in what else name.lower()))
    return "timeline: " + ", ".join(f"{name} +{when - marks[0][0]:.2f}" for when, name in marks)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prefetch_child(pid: int) -> int | None:
    """The worker's prefetch process, if it started one."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"distbuild.worker.prefetch" in cmdline:
            return int(entry.name)
    return None


def child_figures(pid: int | None) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a prefetch process; zeros if there is none."""
    if pid is None:
        return 0.0, 0
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return cpu_seconds(pid), peak


def prefetch_counts(log: Path) -> tuple[int, int]:
    """Artifacts a worker prefetched before the staging chunk's job began there, and after."""
    before = after = 0
    started = False
    for line in log.read_text(errors="replace").splitlines():
        if "building chunk:top/stage" in line and "stage-again" not in line:
            started = True
        elif " prefetched " in line:
            if started:
                after += 1
            else:
                before += 1
    return before, after


def worker_settings(prefetch: bool):
    """Network's settings writer, with every worker's `prefetch` set to `prefetch`."""
    write = Network._write_settings

    def patched(self, name: str, section: str, values: dict) -> Path:
        if section == "worker":
            values = {**values, "prefetch": prefetch}
        return write(self, name, section, values)

    return patched


def run(args: argparse.Namespace, prefetch: bool, reference: bool) -> dict:
    """One whole build on a new network; its figures."""
    load = os.getloadavg()
    original = Network._write_settings
    Network._write_settings = worker_settings(prefetch)
    with tempfile.TemporaryDirectory(prefix="distbuild-staging-bench-") as tmp:
        base = Path(tmp)
        try:
            bench = Bench(base, workers=2, source_name="bench-staging",
                          source_files={"gen.py": GENERATOR})
        finally:
            Network._write_settings = original
        out: dict = {"prefetch": prefetch}
        try:
            defs = base / "defs"
            write_definitions(defs, args.chunks, args.files, ["stage"])
            workers = {c.name: c.proc.pid for c in bench.net.components
                       if c.name.startswith("worker-")}
            tag = "prefetch" if prefetch else "cold"
            spies = [subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "200",
                                       "--threads", "-f", "raw", "-o",
                                       f"{args.py_spy}-{tag}-{name}.txt"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for name, pid in workers.items()] if args.py_spy else []
            watch = RssWatch(workers)
            cpu = {name: cpu_seconds(pid) for name, pid in workers.items()}
            started = time.monotonic()
            bench.build_output(defs)
            out["whole"] = time.monotonic() - started
            out["rss"] = watch.done()
            out["cpu"] = {name: (cpu_seconds(pid) - cpu[name],
                                 *child_figures(prefetch_child(pid)))
                          for name, pid in workers.items()}
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait()
            out["steps"] = bench.step_seconds()
            write_definitions(defs, args.chunks, args.files, ["stage", "stage-again"])
            bench.build_output(defs, "stage-again")
            out["again"] = bench.step_seconds()["chunk:top/stage-again"]
            dirs = [base / "state" / name for name in workers]
            out["phases"] = step_phases(dirs, args.chunks)
            out["prefetched"] = {name: prefetch_counts(base / "state" / "logs" / f"{name}.log")
                                 for name in workers}
            if reference:
                out["tar"] = gnu_tar_figures(dirs, base, "ref")
        finally:
            bench.stop()
    out["load"] = (load, os.getloadavg())
    return out


def report(args: argparse.Namespace, out: dict) -> None:
    """Print one run's figures."""
    steps = out["steps"]
    deps = [s for n, s in steps.items() if n.startswith("chunk:deps/")]
    stage, system = steps["chunk:top/stage"], steps["system:bench"]
    (a1, a5, _), (b1, b5, _) = out["load"]
    if out["prefetch"]:
        title = "WITH PREFETCH (as a user runs it)"
        first = "staging chunk, first use, with prefetch:   "
    else:
        title = "COLD: prefetch off, the step fetches and unpacks its inputs"
        first = "staging chunk, first use (cold, fetched):  "
    print(f"== {title}; load average {a1:.1f}/{a5:.1f} -> {b1:.1f}/{b5:.1f}")
    print(f"{args.chunks} chunks x {args.files} files of 4 KiB, 2 workers; whole build "
          f"{out['whole']:.1f} s; dependency steps median "
          f"{sorted(s for _, s in deps)[len(deps) // 2]:.2f} s")
    print(f"{first}{stage[1]:.2f} s on {stage[0]} (goal <= 1.0 s)")
    print(f"staging chunk, trees already unpacked:       {out['again'][1]:.2f} s on "
          f"{out['again'][0]}")
    print(f"system assembly:                              {system[1]:.2f} s on {system[0]} "
          "(goal <= 3.0 s)")
    if "tar" in out:
        unpack, pack = out["tar"]
        print(f"  side by side, GNU tar -xzf of the {args.chunks} artifacts: {unpack:.2f} s; "
              f"tar -czf of the result: {pack:.2f} s")
    for line in out["phases"]:
        print(f"  from the steps' logs: {line[-110:]}")
    print("  artifacts prefetched (before the staging chunk started there / after): " + ", ".join(
        f"{name} {b} / {a}" for name, (b, a) in sorted(out["prefetched"].items())))
    for name, (idle, peak) in sorted(out["rss"].items()):
        mark = " (assembled the system)" if name == system[0] else ""
        own, child, child_rss = out["cpu"][name]
        print(f"{name} RSS: idle {idle / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB, "
              f"+{(peak - idle) / 2**20:.0f} MiB{mark} (goal <= +150 MiB); CPU through the "
              f"build {own:.1f} s" + (f", its prefetch process {child:.1f} s (peak RSS "
                                      f"{child_rss / 2**20:.0f} MiB)" if child_rss else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--files", type=int, default=250)
    parser.add_argument("--only", choices=("cold", "prefetch"),
                        help="run only one of the two builds")
    parser.add_argument("--py-spy", metavar="PREFIX",
                        help="profile each worker through the first build into "
                             "PREFIX-{cold,prefetch}-NAME.txt (py-spy raw format, one stack "
                             "per thread)")
    args = parser.parse_args()
    modes = [m for m in (False, True) if args.only is None or args.only == (
        "prefetch" if m else "cold")]
    for i, prefetch in enumerate(modes):
        report(args, run(args, prefetch, reference=i == 0))


if __name__ == "__main__":
    main()

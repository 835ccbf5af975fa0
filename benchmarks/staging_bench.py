#!/usr/bin/env python3
"""Real-size staging and system assembly (issue 16), on a `distbuild up` network.

200 chunks each install 250 files of 4 KiB (2 KiB random, 2 KiB text: about
2:1 under gzip, like binaries) under /usr/share/NAME, all in one artifact
per chunk: 50,000 files, 200 MB. A chunk `stage` build-depends on all of
them and runs `true`; the system assembles all 201 chunks. 2 workers, one
slot each, as the issue measured. Printed, as the initiator reports them
(the worker's step time, which the initiator prints
as "Finished building ... in N s"; read here from the controller's records,
to the millisecond):

- the staging chunk's step (goal <= 1.0 s) and the system's (goal <= 3.0 s);
- with a second staging chunk built afterwards (a new request), the step
  when every tree is already unpacked on its worker;
- each worker's peak RSS during the build above its idle RSS (goal: the
  assembling worker <= 150 MB);
- for reference, side by side: GNU tar unpacking the same 200 tarballs
  (one `tar -xzf` each), and `tar -czf` packing the assembled tree.

Usage: benchmarks/staging_bench.py [--chunks 200] [--files 250]
"""

from __future__ import annotations

import argparse
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
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--files", type=int, default=250)
    parser.add_argument("--py-spy", metavar="PREFIX",
                        help="profile each worker through the first build into PREFIX-NAME.txt "
                             "(py-spy raw format, one stack per thread)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="distbuild-staging-bench-") as tmp:
        base = Path(tmp)
        bench = Bench(base, workers=2, source_name="bench-staging",
                      source_files={"gen.py": GENERATOR})
        try:
            defs = base / "defs"
            write_definitions(defs, args.chunks, args.files, ["stage"])
            workers = {c.name: c.proc.pid for c in bench.net.components
                       if c.name.startswith("worker-")}
            spies = [subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "200",
                                       "--threads", "-f", "raw", "-o",
                                       f"{args.py_spy}-{name}.txt"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for name, pid in workers.items()] if args.py_spy else []
            watch = RssWatch(workers)
            started = time.monotonic()
            bench.build_output(defs)
            whole = time.monotonic() - started
            rss = watch.done()
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait()
            steps = bench.step_seconds()
            write_definitions(defs, args.chunks, args.files, ["stage", "stage-again"])
            bench.build_output(defs, "stage-again")
            again = bench.step_seconds()
            phases = step_phases([base / "state" / name for name in workers], args.chunks)
            unpack, pack = gnu_tar_figures(
                [base / "state" / name for name in workers], base, "ref")
        finally:
            bench.stop()
    deps = [s for n, s in steps.items() if n.startswith("chunk:deps/")]
    stage, system = steps["chunk:top/stage"], steps["system:bench"]
    print(f"{args.chunks} chunks x {args.files} files of 4 KiB, 2 workers; whole build "
          f"{whole:.1f} s; dependency steps median "
          f"{sorted(s for _, s in deps)[len(deps) // 2]:.2f} s")
    print(f"staging chunk (trees unpacked on first use): {stage[1]:.2f} s on {stage[0]} "
          "(goal <= 1.0 s)")
    print(f"staging chunk, trees already unpacked:       "
          f"{again['chunk:top/stage-again'][1]:.2f} s on {again['chunk:top/stage-again'][0]}")
    print(f"system assembly:                              {system[1]:.2f} s on {system[0]} "
          "(goal <= 3.0 s)")
    print(f"  side by side, GNU tar -xzf of the {args.chunks} artifacts: {unpack:.2f} s; "
          f"tar -czf of the result: {pack:.2f} s")
    for line in phases:
        print(f"  from the steps' logs: {line[-110:]}")
    for name, (idle, peak) in sorted(rss.items()):
        mark = " (assembled the system)" if name == system[0] else ""
        print(f"{name} RSS: idle {idle / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB, "
              f"+{(peak - idle) / 2**20:.0f} MiB{mark} (goal <= +150 MiB)")


if __name__ == "__main__":
    main()

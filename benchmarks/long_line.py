"""Worker memory for a step that prints one 50 MB line: the bounded path against the old one.

Each round runs two child processes side by side, alternating which goes
first. Each imports the worker's modules, notes its RSS when idle, then runs
`head -c 50000000 /dev/zero | tr '\\0' x; echo` the way a worker does and
reports its peak RSS (VmHWM) above idle:

- `bounded`: runprocess (lines cut at 256 KiB) into the job spool
  (worker/jobs.py), read back as job-output messages the way the sender
  thread sends them, each encoded with the protocol codec;
- `old`: the pump before this change (the pending buffer grows by
  concatenation until the newline) and one job-output holding the whole
  line, encoded as the old batcher did (the controller then dropped the link:
  the message is over the 16 MiB limit).

Goal: bounded at most 100 MB above idle.

    .venv/bin/python benchmarks/long_line.py [--rounds N] [--mb 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import dataclasses, json, subprocess, sys, tempfile, threading
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from distbuild import runprocess
from distbuild.protocol import messages as m
from distbuild.protocol.codec import encode
from distbuild.worker import jobs

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

mode, size = sys.argv[2], int(sys.argv[3])
command = ["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' x; echo; echo done"]
idle = rss("VmRSS:")
sent = 0
if mode == "bounded":
    with tempfile.TemporaryDirectory() as tmp:
        spool = jobs.OutputSpool(Path(tmp) / "j.out")
        spool.rewind(0)
        runprocess.run(command, on_line=spool.append)
        while True:
            first, lines = spool.read()
            if not lines:
                break
            sent = max(sent, len(encode(m.JobOutput(job="j", lines=lines, first=first))))
        spool.close()
else:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pending, lines = b"", []
    while chunk := proc.stdout.read1(65536):
        pending += chunk
        *done, pending = pending.split(b"\n")
        lines += [d.decode("utf-8", "replace") for d in done]
    proc.wait()
    body = {"type": "job-output", **dataclasses.asdict(m.JobOutput(job="j", lines=lines))}
    sent = len(json.dumps(body, separators=(",", ":")).encode() + b"\n")
print(json.dumps({"idle_kib": idle, "peak_kib": rss("VmHWM:"), "largest_message": sent}))
"""


def measure(mode: str, size: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), mode, str(size)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    size = args.mb * 1000 * 1000
    above: dict[str, list[float]] = {"bounded": [], "old": []}
    largest: dict[str, int] = {}
    for n in range(args.rounds):
        for mode in (("bounded", "old") if n % 2 == 0 else ("old", "bounded")):
            r = measure(mode, size)
            above[mode].append((r["peak_kib"] - r["idle_kib"]) / 1024)
            largest[mode] = r["largest_message"]
            print(f"round {n + 1} {mode:8} peak above idle {above[mode][-1]:7.1f} MiB, "
                  f"largest message {r['largest_message'] / 1e6:6.2f} MB", flush=True)
    for mode, values in above.items():
        print(f"{mode:8} median {statistics.median(values):7.1f} MiB above idle "
              f"(min {min(values):.1f}, max {max(values):.1f}); largest message "
              f"{largest[mode] / 1e6:.2f} MB")
    ratio = statistics.median(above["old"]) / max(statistics.median(above["bounded"]), 0.1)
    print(f"old / bounded: {ratio:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

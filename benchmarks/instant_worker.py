#!/usr/bin/env python3
"""Many workers in one process that build each step at once, over real links (benchmarks only).

Each worker opens its own SSH link to the controller with the real worker
key, says `worker-ready` (one slot), and answers every `job-run` by
uploading one small artifact for the step's cache key to the trove with the
job's token (so the controller's check with the cache passes, as for a real
build) and sending `job-finished`. It notes, for each job after the first,
the time from sending `job-finished` to receiving the next `job-run` (the
slot's idle time as this process sees it), and when it sent each
`job-finished`. On SIGTERM it writes {"latencies": [...], "finished": {job:
time}, "first": t, "last": t} to --out.

    instant_worker.py --port P --identity KEY --known-hosts F --names w1,w2 --out F.json
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distbuild.definitions.graph import node_from_dict
from distbuild.link import LinkError, connect
from distbuild.protocol import messages as m
from distbuild.trove.client import CacheClient


def serve(name: str, args, artifact: Path, stop: threading.Event, out: dict, lock) -> None:
    link = connect("127.0.0.1", args.port, args.identity, args.known_hosts, "worker", name,
                   timeout=60)
    cache = CacheClient(args.cache_url)
    link.send(m.WorkerReady(arch="x86_64", slots=1))
    sent_at = None
    latencies = []
    finished = {}
    try:
        while not stop.is_set():
            message = link.receive(timeout=0.5)
            if not isinstance(message, m.JobRun):
                continue
            now = time.time()
            if sent_at is not None:
                latencies.append(now - sent_at)
            node = node_from_dict(message.step)
            cache.upload_source(node.cache_key, {f: artifact for f in node.artifact_filenames()},
                                message.token)
            link.send(m.JobFinished(job=message.job, seconds=time.time() - now))
            sent_at = finished[message.job] = time.time()
            with lock:
                out["first"] = min(out.get("first", now), now)
                out["last"] = max(out.get("last", 0.0), sent_at)
    except LinkError:
        pass
    finally:
        with lock:
            out["latencies"].extend(latencies)
            out["finished"].update(finished)
        link.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--identity", type=Path, required=True)
    parser.add_argument("--known-hosts", type=Path, required=True)
    parser.add_argument("--cache-url", required=True)
    parser.add_argument("--names", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    out: dict = {"latencies": [], "finished": {}}
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="instant-worker-") as tmp:
        artifact = Path(tmp) / "artifact"
        artifact.write_bytes(b"built at once\n")
        threads = [threading.Thread(target=serve, args=(n, args, artifact, stop, out, lock),
                                    daemon=True) for n in args.names.split(",")]
        for t in threads:
            t.start()
        while not stop.is_set():
            stop.wait(0.5)
        for t in threads:
            t.join(timeout=5)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(json.dumps(out))
    tmp_out.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

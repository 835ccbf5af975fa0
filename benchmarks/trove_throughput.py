"""Throughput of the trove's artifact cache on loopback against curl + python -m http.server.

Usage: python benchmarks/trove_throughput.py [--size-mib 1024] [--runs 5] [--no-fsync]

Starts a real trove process and a plain static file server on 127.0.0.1 and
moves one random artifact. The baseline is curl fetching it from http.server
to /dev/null. Then: curl writing it to a file; the distbuild client uploading
it (the trove receives, hashes, stores and fsyncs it); curl fetching it from
the trove; the client streaming it (sha256 verified) to /dev/null and to a
file. Every figure is measured once per round, rounds interleaved, so a busy
spell of the machine hits all of them alike. Prints the best and the median
of each, and each as a share of the baseline (best against best, and the
median of each round's share). Goal: upload and download at least 50%.

Every written copy is deleted after it is timed: curl's file, the client's
download and the uploaded source in the trove's store; and right before each
figure that writes a file, a scratch file of the same size is written and
deleted. On this VM, memory the guest frees is soon handed back to the host,
and writing into such memory runs at a third of the speed or less, so without
this a figure's speed would depend on how long ago something else freed
memory. With it every writer gets recently used memory, as a long-running
trove with a full page cache has.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from distbuild import tokens  # noqa: E402
from distbuild.trove.client import CacheClient  # noqa: E402
from tests.trove_process import TroveProcess  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_file(path: Path, mib: int) -> str:
    h = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(mib):
            piece = block[:-8] + i.to_bytes(8, "big")
            h.update(piece)
            f.write(piece)
    return h.hexdigest()


def warm_page_cache(work: Path, mib: int) -> None:
    """Write and delete a file so the page cache has memory it touched just before.

    In this VM, writing into memory the host took back runs at about 320 MiB/s
    and into recently used memory at over 2 GiB/s (see the module docstring)."""
    block = os.urandom(1 << 20)
    path = work / "warm"
    with open(path, "wb", buffering=0) as f:
        for _ in range(mib):
            f.write(block)
    path.unlink()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process and its finished children (curl)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(fn, server_pid: int, cleanup, prepare) -> tuple[float, float]:
    """(wall seconds, client + server CPU seconds) of one call between untimed
    `prepare()` and `cleanup()`.

    CPU seconds hardly depend on what else the machine runs, unlike wall time."""
    prepare()
    cpu0, server0 = own_cpu(), process_cpu(server_pid)
    wall = timed(fn)
    cpu = own_cpu() - cpu0 + process_cpu(server_pid) - server0
    cleanup()
    return wall, cpu


def nothing() -> None:
    pass


def curl(url: str, out: str = os.devnull) -> None:
    subprocess.run(["curl", "-sf", "-o", out, url], check=True)


def wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--runs", type=int, default=5, help="rounds; every figure once each")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trove-bench-"))
    static, trove = None, None
    try:
        key = "be" * 32
        name = f"{key}.system.bench-rootfs"
        (work / "www").mkdir()
        src = work / "www" / name
        digest = make_file(src, args.size_mib)
        size_mb = args.size_mib * (1 << 20) / 1e6
        port = free_port()
        static = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                                   "127.0.0.1", "--directory", str(work / "www")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(port)
        extra = ["--config", str(work / "conf.yaml")] if args.no_fsync else []
        (work / "conf.yaml").write_text("trove:\n  fsync: no\n")
        trove = TroveProcess(work / "trove", *extra).start()
        client = CacheClient(trove.cache_url)
        secret = trove.secret
        fresh_keys = iter(range(1 << 30))
        uploaded: list[str] = []

        def upload(known: str | None = None) -> None:
            # A fresh key per run: a key already cached would be answered at once.
            k = f"{next(fresh_keys):064x}"
            filename = f"{k}.system.bench-rootfs"
            client.upload_source(k, {filename: src}, tokens.issue(secret, k),
                                 sha256s={filename: known} if known else None)
            uploaded.append(k)

        def remove_uploaded() -> None:
            # What the store's garbage collection would do (see the module docstring).
            k = uploaded.pop()
            shutil.rmtree(trove.artifact_dir / "sources" / k[:2] / k)

        def remove(path: Path):
            return lambda: path.unlink()

        def to_null() -> None:
            with open(os.devnull, "wb") as null:
                client.stream(name, null, digest)

        static_url = f"http://127.0.0.1:{port}/{name}"
        trove_url = f"{client.base_url}1.0/artifacts?filename={name}"
        client.upload_source(key, {name: src}, tokens.issue(secret, key), sha256s={name: digest})
        tpid = trove.proc.pid
        baseline = "curl from python -m http.server (baseline)"
        curl_file = "curl -o FILE from python -m http.server"
        def warm() -> None:
            warm_page_cache(work, args.size_mib)

        steps = {
            baseline: (lambda: curl(static_url), static.pid, nothing, nothing),
            curl_file: (lambda: curl(static_url, str(work / "c")), static.pid,
                        remove(work / "c"), warm),
            "distbuild upload, sha256 given (as workers upload)":
                (lambda: upload(digest), tpid, remove_uploaded, warm),
            "distbuild upload, client hashes the file first":
                (upload, tpid, remove_uploaded, warm),
            "curl from the trove (GET /1.0/artifacts)":
                (lambda: curl(trove_url), tpid, nothing, nothing),
            "distbuild stream to /dev/null (sha256 verified)": (to_null, tpid, nothing, nothing),
            "distbuild download to a file (sha256 verified)":
                (lambda: client.download(name, work / "d", digest), tpid, remove(work / "d"),
                 warm),
        }
        results: dict[str, list[tuple[float, float]]] = {label: [] for label in steps}
        for _ in range(args.runs):
            for label, (fn, pid, cleanup, prepare) in steps.items():
                results[label].append(measure(fn, pid, cleanup, prepare))
        report(args, results, baseline, curl_file, size_mb)
        print(f"  trove peak RSS: {trove.rss_peak_kib() / 1024:.0f} MiB")
    finally:
        if trove is not None:
            trove.stop()
        if static is not None:
            static.terminate()
            static.wait()
        shutil.rmtree(work, ignore_errors=True)


def report(args, results: dict[str, list[tuple[float, float]]], baseline: str,
           curl_file: str, size_mb: float) -> None:
    """Print best and median rate of every figure and its share of the baseline."""
    def rates(label: str) -> list[float]:
        return [size_mb / wall for wall, _ in results[label]]

    base, base_file = rates(baseline), rates(curl_file)
    gib = args.size_mib / 1024
    print(f"artifact: {args.size_mib} MiB, fsync={'no' if args.no_fsync else 'yes'}, "
          f"{args.runs} rounds, {os.cpu_count()} CPUs, loopback, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  {'':<52} {'best MB/s':>10} {'median':>8} {'/baseline':>10} {'median of':>10} "
          f"{'/curl -o':>9} {'CPU s/GiB':>10}")
    print(f"  {'':<52} {'':>10} {'':>8} {'(best)':>10} {'rounds':>10} {'(best)':>9} "
          f"{'(median)':>10}")
    for label, runs in results.items():
        got = rates(label)
        shares = [r / b for r, b in zip(got, base, strict=True)]
        cpu = statistics.median(c for _, c in runs) / gib
        print(f"  {label:<52} {max(got):10.0f} {statistics.median(got):8.0f} "
              f"{max(got) / max(base):10.0%} {statistics.median(shares):10.0%} "
              f"{max(got) / max(base_file):9.0%} {cpu:10.2f}")
    print("  MB/s round by round:")
    for label in results:
        print(f"  {label:<52} " + " ".join(f"{r:6.0f}" for r in rates(label)))


if __name__ == "__main__":
    main()

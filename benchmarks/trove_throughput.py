"""Throughput of the trove's artifact cache on loopback against curl + python -m http.server.

Usage: python benchmarks/trove_throughput.py [--size-mib 1024] [--no-fsync]

Starts a real trove process and a plain static file server on 127.0.0.1, then
times: curl fetching the artifact from http.server (the baseline), curl
fetching it from the trove, the distbuild client downloading it (streamed to a
file, sha256 verified) and uploading it (sha256 computed by the client, then
streamed; the trove hashes and stores it). Prints MB/s and each as a share of
the baseline. Goal: upload and download at least 50% of the baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
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
    """Write and delete a file: in a VM, never-touched guest memory is slow to fault in,
    which would otherwise charge whichever figure runs first; freed pages come back fast."""
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


def curl(url: str) -> float:
    return timed(lambda: subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True))


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
    parser.add_argument("--runs", type=int, default=3, help="best of N for each figure")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trove-bench-"))
    static, trove = None, None
    try:
        key = "be" * 32
        name = f"{key}.system.bench-rootfs"
        (work / "www").mkdir()
        src = work / "www" / name
        digest = make_file(src, args.size_mib)
        warm_page_cache(work, 3 * args.size_mib)
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

        runs = iter(range(1000))

        def upload(known: str | None = None) -> None:
            # A fresh key per run: a key already cached would be answered at once.
            k = f"{next(runs):064x}"
            client.upload_source(k, {f"{k}.system.bench-rootfs": src}, tokens.issue(secret, k),
                                 sha256s={f"{k}.system.bench-rootfs": known} if known else None)

        def curl_to_file(url: str) -> float:
            seconds = timed(lambda: subprocess.run(["curl", "-sf", "-o", str(work / "c"), url],
                                                   check=True))
            (work / "c").unlink()
            return seconds

        figures = {
            "curl from python -m http.server (baseline)":
                min(curl(f"http://127.0.0.1:{port}/{name}") for _ in range(args.runs)),
            "curl -o FILE from python -m http.server":
                min(curl_to_file(f"http://127.0.0.1:{port}/{name}") for _ in range(args.runs)),
            "distbuild upload, client computes sha256 first":
                min(timed(upload) for _ in range(args.runs)),
        }
        client.upload_source(key, {name: src}, tokens.issue(secret, key), sha256s={name: digest})
        url = f"{client.base_url}1.0/artifacts?filename={name}"
        figures["curl from the trove (GET /1.0/artifacts)"] = min(
            curl(url) for _ in range(args.runs))
        def to_null() -> None:
            with open(os.devnull, "wb") as null:
                client.stream(name, null, digest)

        figures["distbuild stream to /dev/null (sha256 verified)"] = min(
            timed(to_null) for _ in range(args.runs))
        out = work / "downloaded"
        figures["distbuild download to a file (sha256 verified)"] = min(
            timed(lambda: client.download(name, out, digest)) for _ in range(args.runs))
        figures["distbuild upload, sha256 given by the caller"] = min(
            timed(lambda: upload(digest)) for _ in range(args.runs))
        base = size_mb / figures["curl from python -m http.server (baseline)"]
        base_file = size_mb / figures["curl -o FILE from python -m http.server"]
        print(f"artifact: {args.size_mib} MiB, fsync={'no' if args.no_fsync else 'yes'}, "
              f"best of {args.runs}, {os.cpu_count()} CPUs, loopback")
        print(f"  {'':<55} {'time':>8} {'rate':>13} {'/baseline':>10} {'/curl -o':>9}")
        for label, seconds in figures.items():
            rate = size_mb / seconds
            print(f"  {label:<55} {seconds:6.2f} s {rate:8.0f} MB/s {rate / base:9.0%} "
                  f"{rate / base_file:9.0%}")
        print(f"  trove peak RSS: {trove.rss_peak_kib() / 1024:.0f} MiB")
    finally:
        if trove is not None:
            trove.stop()
        if static is not None:
            static.terminate()
            static.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

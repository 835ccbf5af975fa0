"""Fair share through real processes: a small request is not stuck behind a big one.

A real trove, controller and two one-slot workers (`distbuild up`); the big
request's 16 chunks each sleep 2 s, the small request is two chunks, its
stratum and its system. Their steps' remaining paths tie, so a scheduler
that served the oldest request first would start the small request only
once every big chunk had started.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.network_process import NetworkProcess

pytestmark = pytest.mark.slow

BIG_CHUNKS = 16


def add_system(checkout: Path, name: str, chunks: dict[str, list[str]], command: str) -> str:
    lines = [f"name: {name}", "kind: stratum", "chunks:"]
    (checkout / "strata" / name).mkdir()
    for chunk, deps in chunks.items():
        (checkout / "strata" / name / f"{chunk}.morph").write_text(
            f"name: {chunk}\nkind: chunk\nbuild-commands:\n- {command}\n"
            f"install-commands:\n- mkdir -p \"$DESTDIR/{chunk}\"\n")
        lines += [f"- name: {chunk}", f"  morph: strata/{name}/{chunk}.morph",
                  "  repo: upstream:base-files", "  ref: master"]
        if deps:
            lines += ["  build-depends:"] + [f"  - {d}" for d in deps]
    (checkout / "strata" / f"{name}.morph").write_text("\n".join(lines) + "\n")
    (checkout / "systems" / f"{name}.morph").write_text(
        f"name: {name}\nkind: system\narch: x86_64\nstrata:\n- morph: strata/{name}.morph\n")
    return f"systems/{name}.morph"


def test_a_small_request_finishes_while_a_big_one_still_runs(tmp_path):
    net = NetworkProcess(tmp_path / "network", workers=2).start()
    big_proc = None
    try:
        checkout = net.checkout(tmp_path / "defs")
        # big: chunk -> fan-in chunk -> stratum -> system; small: s0 -> s1 -> stratum -> system.
        chunks = {f"b{i}": [] for i in range(BIG_CHUNKS)}
        chunks["bz"] = list(chunks)
        big = add_system(checkout, "big", chunks, "sleep 2")
        small = add_system(checkout, "small", {"s0": [], "s1": ["s0"]}, "'true'")
        big_proc = net.initiator(checkout, big, wait=False)
        db_path = net.state / "controller" / "controller.db"
        deadline = time.monotonic() + 60
        while _count(db_path, "SELECT COUNT(*) FROM attempts") < 2:
            if big_proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"big did not start: {big_proc.communicate()[0]}")
            time.sleep(0.1)
        proc = net.initiator(checkout, small)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert big_proc.poll() is None, "the big request ended before the small one"
        db = sqlite3.connect(db_path)
        try:
            (small_ended,), = db.execute(
                "SELECT ended FROM requests WHERE system=?", (small,)).fetchall()
            big_state, big_ended = db.execute(
                "SELECT state, ended FROM requests WHERE system=?", (big,)).fetchone()
            started_before = db.execute(
                "SELECT COUNT(DISTINCT a.cache_key) FROM attempts a JOIN nodes n "
                "ON n.cache_key = a.cache_key JOIN requests r ON r.id = n.request_id "
                "WHERE r.system=? AND n.node_id LIKE 'chunk:big/b%' AND a.started < ?",
                (big, small_ended)).fetchone()[0]
        finally:
            db.close()
        assert big_state == "building" and big_ended is None
        # Its four steps took turns with the big request's: most of big had not started.
        assert started_before < BIG_CHUNKS * 3 // 4, started_before
    finally:
        if big_proc is not None and big_proc.poll() is None:
            big_proc.send_signal(signal.SIGINT)
            big_proc.communicate(timeout=60)
        net.stop()


def _count(db_path: Path, query: str) -> int:
    if not db_path.exists():
        return 0
    db = sqlite3.connect(db_path)
    try:
        return db.execute(query).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()

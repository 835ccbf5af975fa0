"""Requests, their nodes and every build attempt, kept in SQLite.

Written from the start so that a controller restart can later pick requests
up again, and so that status and list answer from one place. Each change is
its own short transaction; the volume is a few rows per step.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    system TEXT NOT NULL,
    definitions_repo TEXT NOT NULL,
    definitions_commit TEXT NOT NULL,
    components TEXT NOT NULL DEFAULT '[]',
    initiator TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    total INTEGER NOT NULL DEFAULT 0,
    unbuilt INTEGER NOT NULL DEFAULT 0,
    built INTEGER NOT NULL DEFAULT 0,
    artifacts TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    ended REAL
);
CREATE TABLE IF NOT EXISTS nodes (
    request_id TEXT NOT NULL REFERENCES requests(id),
    node_id TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (request_id, node_id)
);
CREATE INDEX IF NOT EXISTS nodes_by_key ON nodes(cache_key);
CREATE TABLE IF NOT EXISTS attempts (
    job TEXT PRIMARY KEY,
    cache_key TEXT NOT NULL,
    worker TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    outcome TEXT NOT NULL DEFAULT 'running',
    reason TEXT NOT NULL DEFAULT '',
    worker_seconds REAL,
    command_seconds REAL
);
"""

ACTIVE = ("graphing", "building")


class ControllerState:
    """The controller's durable record of requests, nodes and attempts."""

    def __init__(self, path: Path | str):
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        # Requests that were running when a previous controller stopped cannot be
        # resumed by this version; say so instead of leaving them "building" forever.
        self.db.execute("UPDATE requests SET state='failed', reason='controller restarted', "
                        "ended=? WHERE state IN (?, ?)", (time.time(), *ACTIVE))

    def next_seq(self) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM requests").fetchone()
        return int(row[0])

    def add_request(self, request_id: str, seq: int, system: str, repo: str, commit: str,
                    components: list[str], initiator: str) -> None:
        self.db.execute(
            "INSERT INTO requests (id, seq, system, definitions_repo, definitions_commit, "
            "components, initiator, state, created) VALUES (?, ?, ?, ?, ?, ?, ?, 'graphing', ?)",
            (request_id, seq, system, repo, commit, json.dumps(components), initiator,
             time.time()))

    def planned(self, request_id: str, nodes: list[tuple[str, str, str]], total: int,
                unbuilt: int) -> None:
        """Record the graph: (node id, cache key, state) for every node."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO nodes (request_id, node_id, cache_key, state) "
                "VALUES (?, ?, ?, ?)", [(request_id, *n) for n in nodes])
            self.db.execute("UPDATE requests SET state='building', total=?, unbuilt=? "
                            "WHERE id=?", (total, unbuilt, request_id))

    def node_state(self, cache_key: str, state: str) -> None:
        """Set the state of every active request's node with this key."""
        self.db.execute(
            "UPDATE nodes SET state=? WHERE cache_key=? AND request_id IN "
            "(SELECT id FROM requests WHERE state IN (?, ?))", (state, cache_key, *ACTIVE))

    def progress(self, request_id: str, built: int) -> None:
        self.db.execute("UPDATE requests SET built=? WHERE id=?", (built, request_id))

    def ended(self, request_id: str, state: str, reason: str = "",
              artifacts: list[str] | None = None) -> None:
        """A request finished, failed or was cancelled."""
        self.db.execute(
            "UPDATE requests SET state=?, reason=?, artifacts=?, ended=? WHERE id=?",
            (state, reason, json.dumps(artifacts or []), time.time(), request_id))

    def attempt_started(self, job: str, cache_key: str, worker: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO attempts (job, cache_key, worker, started) "
                        "VALUES (?, ?, ?, ?)", (job, cache_key, worker, time.time()))

    def attempt_ended(self, job: str, outcome: str, reason: str = "",
                      worker_seconds: float | None = None,
                      command_seconds: float | None = None) -> None:
        """An attempt ended; a built one records the worker's own timings too."""
        self.db.execute("UPDATE attempts SET ended=?, outcome=?, reason=?, worker_seconds=?, "
                        "command_seconds=? WHERE job=?",
                        (time.time(), outcome, reason, worker_seconds, command_seconds, job))

    def request(self, request_id: str) -> dict[str, Any] | None:
        """One request as status reports it, with counts of its nodes by state."""
        row = self.db.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
        if row is None:
            return None
        out = _request_dict(row)
        counts = self.db.execute("SELECT state, COUNT(*) FROM nodes WHERE request_id=? "
                                 "GROUP BY state", (request_id,)).fetchall()
        out["nodes"] = {state: n for state, n in counts}
        running = self.db.execute(
            "SELECT n.node_id, a.worker FROM nodes n JOIN attempts a ON a.cache_key = n.cache_key "
            "WHERE n.request_id=? AND a.outcome='running'", (request_id,)).fetchall()
        out["running"] = [{"step": r[0], "worker": r[1]} for r in running]
        return out

    def requests(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest requests first."""
        rows = self.db.execute("SELECT * FROM requests ORDER BY seq DESC LIMIT ?",
                               (limit,)).fetchall()
        return [_request_dict(r) for r in rows]

    def close(self) -> None:
        self.db.close()


def _request_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["components"] = json.loads(out["components"])
    out["artifacts"] = json.loads(out["artifacts"])
    return out

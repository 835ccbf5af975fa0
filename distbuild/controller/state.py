"""Requests, their plans, their nodes and every build attempt, kept in SQLite.

A restarted controller resumes from here: the requests still active, each
with the plan it was building (its graph as JSON), and the attempts that
were running. Attempt rows are only ever added, and an attempt's outcome is
written once (`running` until then): the table is the network's history.

A change outside `batch()` is its own transaction. The controller runs each
message handler and each batch of cache answers in `batch()`: one commit for
all its writes (a handful per step), made before the handler returns to the
reactor. Twisted only writes to sockets from the reactor loop, so no message
that reports a change (a job-run, a step-finished) leaves the process before
the change is committed: a SIGKILL loses both or neither.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
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
-- A plan is the whole graph as JSON (megabytes for a large system): it lives apart
-- from its request's row, which is updated at every step built and would otherwise
-- be rewritten whole each time.
CREATE TABLE IF NOT EXISTS plans (
    request_id TEXT PRIMARY KEY REFERENCES requests(id),
    plan TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    job TEXT NOT NULL UNIQUE,
    cache_key TEXT NOT NULL,
    worker TEXT NOT NULL,
    request_id TEXT NOT NULL DEFAULT '',
    attempt INTEGER NOT NULL DEFAULT 1,
    started REAL NOT NULL,
    ended REAL,
    outcome TEXT NOT NULL DEFAULT 'running',
    reason TEXT NOT NULL DEFAULT '',
    worker_seconds REAL,
    command_seconds REAL
);
"""

ACTIVE = ("graphing", "building")
# Columns added since the first release, for databases made by it.
_ADDED = {"requests": {"plan": "TEXT", "schedule": "TEXT NOT NULL DEFAULT ''"}}


class ControllerState:
    """The controller's durable record of requests, nodes and attempts."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._upgrade()
        self.db.executescript(SCHEMA)
        for table, columns in _ADDED.items():
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        # Plans kept in the requests table by an earlier version move to their own.
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT OR IGNORE INTO plans (request_id, plan) SELECT id, plan "
                            "FROM requests WHERE plan IS NOT NULL")
            self.db.execute("UPDATE requests SET plan=NULL WHERE plan IS NOT NULL")
        row = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM attempts").fetchone()
        self._attempts_made = int(row[0])

    def _upgrade(self) -> None:
        """Keep the attempts of a first-release database (keyed by job) under the new schema."""
        have = {r[1] for r in self.db.execute("PRAGMA table_info(attempts)")}
        if have and "id" not in have:
            self.db.execute("ALTER TABLE attempts RENAME TO attempts_v1")
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT INTO attempts (job, cache_key, worker, started, ended, "
                            "outcome, reason, worker_seconds, command_seconds) SELECT job, "
                            "cache_key, worker, started, ended, outcome, reason, "
                            "worker_seconds, command_seconds FROM attempts_v1 ORDER BY started")
            self.db.execute("DROP TABLE attempts_v1")

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Make the writes inside one transaction, committed at the end (nested: the outer one)."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            # Committed even if the handler raised: written alone, each change would
            # have been kept too.
            self.db.execute("COMMIT")

    def checkpoint_elsewhere(self) -> None:
        """Stop SQLite's checkpoints inside commits: a `checkpoints.Checkpointer` makes them."""
        self.db.execute("PRAGMA wal_autocheckpoint=0")

    def next_job(self, cache_key: str) -> str:
        """A job id never used before in this network: KEY[:16]-N, N counting every attempt."""
        self._attempts_made += 1
        return f"{cache_key[:16]}-{self._attempts_made}"

    def next_seq(self) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM requests").fetchone()
        return int(row[0])

    def add_request(self, request_id: str, seq: int, system: str, repo: str, commit: str,
                    components: list[str], initiator: str, schedule: str = "") -> None:
        self.db.execute(
            "INSERT INTO requests (id, seq, system, definitions_repo, definitions_commit, "
            "components, initiator, state, created, schedule) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'graphing', ?, ?)",
            (request_id, seq, system, repo, commit, json.dumps(components), initiator,
             time.time(), schedule))

    def planned(self, request_id: str, nodes: list[tuple[str, str, str]], total: int,
                unbuilt: int) -> None:
        """Record the graph: (node id, cache key, state) for every node."""
        with self.batch():
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

    def step_state(self, requests: Mapping[str, str], state: str) -> None:
        """Set the state of one step in each request of `requests` (request id -> node id)."""
        self.db.executemany("UPDATE nodes SET state=? WHERE request_id=? AND node_id=?",
                            [(state, rid, nid) for rid, nid in requests.items()])

    def progress(self, request_id: str, built: int) -> None:
        self.db.execute("UPDATE requests SET built=? WHERE id=?", (built, request_id))

    def ended(self, request_id: str, state: str, reason: str = "",
              artifacts: list[str] | None = None) -> None:
        """A request finished, failed or was cancelled."""
        with self.batch():
            self.db.execute(
                "UPDATE requests SET state=?, reason=?, artifacts=?, ended=? WHERE id=?",
                (state, reason, json.dumps(artifacts or []), time.time(), request_id))
            # Nothing of an ended request runs or waits any more.
            self.db.execute("UPDATE nodes SET state='not built' WHERE request_id=? AND state "
                            "IN ('waiting', 'ready', 'running')", (request_id,))

    def attempt_started(self, job: str, cache_key: str, worker: str, request_id: str = "",
                        attempt: int = 1) -> None:
        """A new attempt (a job id is never reused: a second insert is an error)."""
        number = int(job.rsplit("-", 1)[1]) if job.rsplit("-", 1)[-1].isdigit() else None
        self.db.execute("INSERT INTO attempts (id, job, cache_key, worker, request_id, attempt, "
                        "started) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (number, job, cache_key, worker, request_id, attempt, time.time()))

    def attempt_ended(self, job: str, outcome: str, reason: str = "",
                      worker_seconds: float | None = None,
                      command_seconds: float | None = None) -> None:
        """A running attempt ended; a built one records the worker's own timings too.

        An attempt that already has its outcome keeps it."""
        self.db.execute("UPDATE attempts SET ended=?, outcome=?, reason=?, worker_seconds=?, "
                        "command_seconds=? WHERE job=? AND outcome='running'",
                        (time.time(), outcome, reason, worker_seconds, command_seconds, job))

    def active_requests(self) -> list[dict[str, Any]]:
        """Requests a restarted controller resumes, oldest first, with their saved plans."""
        rows = self.db.execute("SELECT requests.*, plans.plan AS saved_plan FROM requests "
                               "LEFT JOIN plans ON plans.request_id = requests.id "
                               "WHERE state IN (?, ?) ORDER BY seq", ACTIVE).fetchall()
        return [_request_dict(r) | {"plan": r["saved_plan"]} for r in rows]

    def save_plan(self, request_id: str, plan: str) -> None:
        """Keep a request's plan (JSON) so that a restarted controller can resume it."""
        self.db.execute("INSERT OR REPLACE INTO plans (request_id, plan) VALUES (?, ?)",
                        (request_id, plan))

    def running_attempts(self) -> list[dict[str, Any]]:
        """Every attempt still marked running, oldest first."""
        rows = self.db.execute("SELECT * FROM attempts WHERE outcome='running' ORDER BY id")
        return [dict(r) for r in rows]

    def attempts_of(self, cache_key: str) -> list[dict[str, Any]]:
        """Every attempt at one cache key, oldest first."""
        rows = self.db.execute("SELECT * FROM attempts WHERE cache_key=? ORDER BY id",
                               (cache_key,))
        return [dict(r) for r in rows]

    def node_key(self, request_id: str, node_id: str) -> str | None:
        """The cache key of one node of a request, if it was planned."""
        row = self.db.execute("SELECT cache_key FROM nodes WHERE request_id=? AND node_id=?",
                              (request_id, node_id)).fetchone()
        return row[0] if row else None

    def node_ids(self, request_id: str) -> list[str]:
        """Every node id of a planned request."""
        return [r[0] for r in self.db.execute("SELECT node_id FROM nodes WHERE request_id=?",
                                              (request_id,))]

    def built_keys(self, request_id: str) -> set[str]:
        """Cache keys recorded as built for a request."""
        rows = self.db.execute("SELECT cache_key FROM nodes WHERE request_id=? AND "
                               "state='built'", (request_id,))
        return {r[0] for r in rows}

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
            "SELECT n.node_id, a.worker, a.job FROM nodes n JOIN attempts a ON "
            "a.cache_key = n.cache_key WHERE n.request_id=? AND a.outcome='running' "
            "AND n.state='running' ORDER BY a.id", (request_id,)).fetchall()
        out["running"] = [{"step": r[0], "worker": r[1], "job": r[2]} for r in running
                          ] if out["state"] in ACTIVE else []
        # Every attempt at one of its steps while it was active, numbered per step from 1.
        rows = self.db.execute(
            "SELECT n.node_id AS step, a.job, a.worker, a.outcome, a.reason, a.started, "
            "a.ended FROM attempts a JOIN nodes n ON n.cache_key = a.cache_key "
            "WHERE n.request_id = ? AND a.started >= ? AND a.started <= ? ORDER BY a.id",
            (request_id, out["created"], out["ended"] or time.time() + 1)).fetchall()
        numbers: dict[str, int] = {}
        out["attempts"] = []
        for r in rows:
            numbers[r["step"]] = numbers.get(r["step"], 0) + 1
            out["attempts"].append(dict(r) | {"attempt": numbers[r["step"]]})
        return out

    def requests(self, limit: int = 50, state: str = "") -> list[dict[str, Any]]:
        """The newest requests first; only those in `state` unless it is ""."""
        rows = self.db.execute("SELECT * FROM requests WHERE ? = '' OR state = ? "
                               "ORDER BY seq DESC LIMIT ?", (state, state, limit)).fetchall()
        return [_request_dict(r) for r in rows]

    def nodes(self, request_id: str) -> list[tuple[str, str, str]]:
        """(node id, cache key, state) of every node of a request, in the order planned."""
        rows = self.db.execute("SELECT node_id, cache_key, state FROM nodes WHERE "
                               "request_id=? ORDER BY rowid", (request_id,))
        return [(r[0], r[1], r[2]) for r in rows]

    def plan(self, request_id: str) -> str | None:
        """The saved plan (JSON) of a request, kept after it ended; None if never planned."""
        row = self.db.execute("SELECT plan FROM plans WHERE request_id=?",
                              (request_id,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.db.close()


def _request_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out.pop("plan", None)
    out.pop("saved_plan", None)
    out["components"] = json.loads(out["components"])
    out["artifacts"] = json.loads(out["artifacts"])
    return out

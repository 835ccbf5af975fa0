"""The controller's record of reproducibility checks, in its SQLite database."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS verifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    step TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    built_by TEXT NOT NULL DEFAULT '',
    verified_by TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'queued',
    reason TEXT NOT NULL DEFAULT '',
    differences TEXT NOT NULL DEFAULT '{}',
    tries INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    ended REAL
);
CREATE INDEX IF NOT EXISTS verifications_by_request ON verifications(request_id);
"""

# A check's states: queued (waits for a worker other than the builder), running,
# then match, mismatch or failed (it could not be rebuilt).
OPEN = ("queued", "running")


class Verifications:
    """Rows of the `verifications` table, on the controller's database connection."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        db.executescript(SCHEMA)

    def add(self, request_id: str, step: str, cache_key: str, built_by: str) -> dict[str, Any]:
        """Queue a check; returns its row."""
        cur = self.db.execute("INSERT INTO verifications (request_id, step, cache_key, "
                              "built_by, created) VALUES (?, ?, ?, ?, ?)",
                              (request_id, step, cache_key, built_by, time.time()))
        return self.get(int(cur.lastrowid or 0))

    def get(self, check_id: int) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM verifications WHERE id=?", (check_id,)).fetchone()
        return _dict(row)

    def started(self, check_id: int, worker: str) -> int:
        """The check runs on `worker`; returns its try number (part of the job id)."""
        self.db.execute("UPDATE verifications SET state='running', verified_by=?, "
                        "tries=tries+1 WHERE id=?", (worker, check_id))
        return int(self.get(check_id)["tries"])

    def requeued(self, check_id: int) -> None:
        self.db.execute("UPDATE verifications SET state='queued', verified_by='' WHERE id=?",
                        (check_id,))

    def ended(self, check_id: int, state: str, reason: str = "",
              differences: dict[str, Any] | None = None) -> dict[str, Any]:
        """A check's outcome: match, mismatch or failed; returns its row."""
        self.db.execute("UPDATE verifications SET state=?, reason=?, differences=?, ended=? "
                        "WHERE id=?", (state, reason, json.dumps(differences or {}),
                                       time.time(), check_id))
        return self.get(check_id)

    def of_request(self, request_id: str) -> list[dict[str, Any]]:
        """Every check of one request, oldest first."""
        rows = self.db.execute("SELECT * FROM verifications WHERE request_id=? ORDER BY id",
                               (request_id,))
        return [_dict(r) for r in rows]

    def unfinished(self) -> list[dict[str, Any]]:
        """Checks a restarted controller queues again."""
        rows = self.db.execute("SELECT * FROM verifications WHERE state IN (?, ?) ORDER BY id",
                               OPEN)
        return [_dict(r) for r in rows]

    def builders(self, request_id: str) -> dict[str, tuple[str, str]]:
        """Node id -> (cache key, worker of its latest built attempt), for a request's nodes."""
        rows = self.db.execute(
            "SELECT n.node_id, n.cache_key, a.worker FROM nodes n JOIN attempts a ON "
            "a.cache_key = n.cache_key WHERE n.request_id=? AND a.outcome='built' "
            "ORDER BY a.id", (request_id,))
        return {r[0]: (r[1], r[2]) for r in rows}

    def built_here(self, request_id: str) -> dict[str, tuple[str, str]]:
        """Like `builders`, for the steps this request's own attempts built."""
        rows = self.db.execute(
            "SELECT n.node_id, n.cache_key, a.worker FROM nodes n JOIN attempts a ON "
            "a.cache_key = n.cache_key WHERE n.request_id=? AND a.request_id=? AND "
            "a.outcome='built' ORDER BY a.id", (request_id, request_id))
        return {r[0]: (r[1], r[2]) for r in rows}

    def plan(self, request_id: str) -> tuple[str, str | None] | None:
        """A request's state and saved plan (JSON), or None if there is no such request."""
        row = self.db.execute("SELECT requests.state, plans.plan FROM requests LEFT JOIN plans "
                              "ON plans.request_id = requests.id WHERE requests.id=?",
                              (request_id,)).fetchone()
        return (row[0], row[1]) if row else None


def _dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["differences"] = json.loads(out["differences"])
    return out

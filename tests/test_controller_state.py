"""The controller's SQLite record survives reopening and answers status and list."""

from distbuild.controller.state import ControllerState


def test_request_lifecycle_is_recorded(tmp_path):
    db = tmp_path / "controller.db"
    state = ControllerState(db)
    state.add_request("r1", state.next_seq(), "systems/s.morph", "defs", "c0ffee", [], "alice")
    state.planned("r1", [("chunk:s/a", "ka", "ready"), ("system:s", "ks", "waiting")], 2, 2)
    job = state.next_job("ka")
    state.attempt_started(job, "ka", "w1", "r1")
    state.node_state("ka", "running")
    status = state.request("r1")
    assert status["state"] == "building" and status["total"] == 2
    assert status["nodes"] == {"running": 1, "waiting": 1}
    assert status["running"] == [{"step": "chunk:s/a", "worker": "w1", "job": job}]
    state.attempt_ended(job, "built")
    state.node_state("ka", "built")
    state.progress("r1", 1)
    state.ended("r1", "finished", artifacts=["http://127.0.0.1:8080/1.0/artifacts?filename=x"])
    state.close()

    reopened = ControllerState(db)
    got = reopened.request("r1")
    assert got["state"] == "finished" and got["built"] == 1
    assert got["artifacts"] == ["http://127.0.0.1:8080/1.0/artifacts?filename=x"]
    assert got["nodes"] == {"built": 1, "not built": 1} and got["running"] == []
    assert reopened.request("nope") is None


def test_list_is_newest_first_and_a_restart_keeps_active_requests(tmp_path):
    db = tmp_path / "controller.db"
    state = ControllerState(db)
    for rid in ("r1", "r2", "r3"):
        state.add_request(rid, state.next_seq(), "systems/s.morph", "defs", "c", [], "")
    state.ended("r1", "finished")
    state.planned("r2", [("chunk:s/a", "ka", "waiting")], 1, 1)
    state.save_plan("r2", '{"saved": 1}')
    job = state.next_job("ka")
    state.attempt_started(job, "ka", "w1", "r2")
    assert [r["id"] for r in state.requests()] == ["r3", "r2", "r1"]
    state.close()
    reopened = ControllerState(db)
    active = {r["id"]: (r["state"], r["plan"]) for r in reopened.active_requests()}
    assert active == {"r2": ("building", '{"saved": 1}'), "r3": ("graphing", None)}
    assert [a["job"] for a in reopened.running_attempts()] == [job]


def test_attempt_ids_are_never_reused_and_rows_never_overwritten(tmp_path):
    import sqlite3

    import pytest

    db = tmp_path / "controller.db"
    state = ControllerState(db)
    first = state.next_job("k" * 64)
    state.attempt_started(first, "k" * 64, "w1")
    state.attempt_ended(first, "failed", "exit 1")
    state.attempt_ended(first, "built")  # too late: the outcome is written once
    with pytest.raises(sqlite3.IntegrityError):
        state.attempt_started(first, "k" * 64, "w2")
    state.close()
    reopened = ControllerState(db)
    second = reopened.next_job("k" * 64)
    assert second != first
    reopened.attempt_started(second, "k" * 64, "w2")
    rows = reopened.attempts_of("k" * 64)
    assert [(r["job"], r["worker"], r["outcome"], r["reason"]) for r in rows] == [
        (first, "w1", "failed", "exit 1"), (second, "w2", "running", "")]


def test_an_ended_request_shows_nothing_running(tmp_path):
    state = ControllerState(tmp_path / "controller.db")
    state.add_request("r1", 1, "systems/s.morph", "defs", "c", [], "")
    state.planned("r1", [("chunk:s/a", "ka", "waiting"), ("chunk:s/b", "kb", "waiting")], 2, 2)
    job = state.next_job("ka")
    state.attempt_started(job, "ka", "w1", "r1")
    state.node_state("ka", "running")
    state.ended("r1", "cancelled")
    status = state.request("r1")
    assert status["running"] == [] and status["nodes"] == {"not built": 2}
    # The attempt it cancelled shows with its outcome, numbered from 1 for this request.
    state.attempt_ended(job, "cancelled")
    assert [(a["step"], a["attempt"], a["outcome"]) for a in state.request("r1")["attempts"]] \
        == [("chunk:s/a", 1, "cancelled")]


def test_a_first_release_database_keeps_its_attempts(tmp_path):
    import sqlite3

    db = tmp_path / "controller.db"
    old = sqlite3.connect(db)
    old.execute("CREATE TABLE attempts (job TEXT PRIMARY KEY, cache_key TEXT NOT NULL, "
                "worker TEXT NOT NULL, started REAL NOT NULL, ended REAL, outcome TEXT NOT NULL "
                "DEFAULT 'running', reason TEXT NOT NULL DEFAULT '', worker_seconds REAL, "
                "command_seconds REAL)")
    old.execute("INSERT INTO attempts (job, cache_key, worker, started, outcome) "
                "VALUES ('k-1', 'k', 'w1', 1.0, 'built')")
    old.commit()
    old.close()
    state = ControllerState(db)
    assert [(a["job"], a["outcome"]) for a in state.attempts_of("k")] == [("k-1", "built")]
    assert state.next_job("k") == "k-2"


def test_plans_live_apart_from_their_requests_and_old_ones_move_there(tmp_path):
    db = tmp_path / "controller.db"
    state = ControllerState(db)
    state.add_request("new", 1, "systems/s.morph", "repo", "c" * 40, [], "alice")
    state.save_plan("new", '{"big": "plan"}')
    state.progress("new", 3)
    # A plan an earlier version kept in the requests row.
    state.add_request("old", 2, "systems/s.morph", "repo", "d" * 40, [], "alice")
    state.db.execute("UPDATE requests SET plan='{\"old\": 1}' WHERE id='old'")
    state.close()

    state = ControllerState(db)
    assert state.plan("new") == '{"big": "plan"}' and state.plan("old") == '{"old": 1}'
    assert {r["id"]: r["plan"] for r in state.active_requests()} == {
        "new": '{"big": "plan"}', "old": '{"old": 1}'}
    # The rows updated at every step built no longer hold the plan.
    assert state.db.execute("SELECT COUNT(*) FROM requests WHERE plan IS NOT NULL"
                            ).fetchone()[0] == 0
    state.close()

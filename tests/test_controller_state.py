"""The controller's SQLite record survives reopening and answers status and list."""

from distbuild.controller.state import ControllerState


def test_request_lifecycle_is_recorded(tmp_path):
    db = tmp_path / "controller.db"
    state = ControllerState(db)
    state.add_request("r1", state.next_seq(), "systems/s.morph", "defs", "c0ffee", [], "alice")
    state.planned("r1", [("chunk:s/a", "ka", "ready"), ("system:s", "ks", "waiting")], 2, 2)
    state.attempt_started("ka-1", "ka", "w1")
    status = state.request("r1")
    assert status["state"] == "building" and status["total"] == 2
    assert status["nodes"] == {"ready": 1, "waiting": 1}
    assert status["running"] == [{"step": "chunk:s/a", "worker": "w1"}]
    state.attempt_ended("ka-1", "built")
    state.node_state("ka", "built")
    state.progress("r1", 1)
    state.ended("r1", "finished", artifacts=["http://127.0.0.1:8080/1.0/artifacts?filename=x"])
    state.close()

    reopened = ControllerState(db)
    got = reopened.request("r1")
    assert got["state"] == "finished" and got["built"] == 1
    assert got["artifacts"] == ["http://127.0.0.1:8080/1.0/artifacts?filename=x"]
    assert got["nodes"] == {"built": 1, "waiting": 1} and got["running"] == []
    assert reopened.request("nope") is None


def test_list_is_newest_first_and_restart_marks_running_requests(tmp_path):
    db = tmp_path / "controller.db"
    state = ControllerState(db)
    for rid in ("r1", "r2", "r3"):
        state.add_request(rid, state.next_seq(), "systems/s.morph", "defs", "c", [], "")
    state.ended("r1", "finished")
    assert [r["id"] for r in state.requests()] == ["r3", "r2", "r1"]
    state.close()
    reopened = ControllerState(db)
    states = {r["id"]: (r["state"], r["reason"]) for r in reopened.requests()}
    assert states == {"r1": ("finished", ""), "r2": ("failed", "controller restarted"),
                      "r3": ("failed", "controller restarted")}

"""The controller's WAL is checkpointed by a thread of its own, not inside the reactor's commits."""

from __future__ import annotations

import time

from distbuild.controller.checkpoints import Checkpointer
from distbuild.controller.state import ControllerState


def _write_round(state: ControllerState, n: int) -> None:
    with state.batch():
        for i in range(200):
            state.attempt_started(f"{n:04d}{i:012d}-{n * 1000 + i + 1}", "k" * 64, "w1")


def _wal_size(state: ControllerState) -> int:
    wal = state.path.with_name(state.path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_commits_leave_the_checkpoints_to_the_thread(tmp_path):
    state = ControllerState(tmp_path / "controller.db")
    state.checkpoint_elsewhere()
    for n in range(1, 6):
        _write_round(state, n)
    grown = _wal_size(state)
    assert grown > 0
    checkpointer = Checkpointer(state.path, every=0.02)
    checkpointer.start()
    try:
        deadline = time.monotonic() + 10
        while checkpointer.done < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert checkpointer.done >= 2
        # Every page is in the database now: a second connection reads them all.
        assert len(ControllerState(state.path).running_attempts()) == 1000
        # The log restarts from its beginning instead of growing on.
        for n in range(6, 11):
            _write_round(state, n)
            time.sleep(0.1)
        assert _wal_size(state) <= grown
    finally:
        checkpointer.stop()
        state.close()

"""The controller's turn record (DISTBUILD_TURN_TRACE), which controller_bench.py reads."""

from __future__ import annotations

import json

from distbuild.link import connect
from distbuild.protocol import messages as m
from tests.controller_process import ControllerProcess


def test_a_stopped_controller_leaves_a_record_of_its_turns(tmp_path, monkeypatch):
    record = tmp_path / "turns.json"
    monkeypatch.setenv("DISTBUILD_TURN_TRACE", str(record))
    controller = ControllerProcess(tmp_path / "controller").start()
    try:
        link = connect("127.0.0.1", controller.worker_port, controller.keys.worker_key,
                       controller.keys.known_hosts, "worker", "w1")
        link.send(m.WorkerReady(arch="x86_64", slots=1))
        link.close()
    finally:
        controller.stop()
    trace = json.loads(record.read_text())
    assert len(trace["turns"]) > 5  # the SSH handshake alone takes several
    for start, wall, cpu, waited in trace["turns"]:
        assert start > 0 and wall >= 0 and cpu >= 0 and waited >= 0
    assert all(generation in (0, 1, 2) for _, generation, _ in trace["gc"])

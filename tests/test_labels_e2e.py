"""Worker labels through real processes: a labelled step runs only on the labelled worker,
waits (and says why) while that worker is away, and fails after label_wait_seconds.

A real trove, controller and two workers (`distbuild up`, which starts a component
again when it dies); settings change by editing a component's file and stopping it.
"""

from __future__ import annotations

import os

import pytest
import yaml

from tests.network_process import NetworkProcess
from tests.test_durable_e2e import SYSTEM, edit, wait_for

pytestmark = pytest.mark.slow

HELLO = "chunk:example-apps/hello"


def restart(net, name: str, **changes) -> None:
    """Start component `name` again with these settings of its file changed."""
    path = net.state / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    next(iter(data.values())).update(changes)
    path.write_text(yaml.safe_dump(data))
    old = net.pid(name)
    os.kill(old, 15)
    wait_for(lambda: net.pid(name) != old, 30, f"{name} to restart")


def joins(net) -> int:
    return net.component_log("controller").count("labels special")


def test_labelled_step_runs_only_on_its_worker_and_waits_while_it_is_away(tmp_path):
    net = NetworkProcess(tmp_path / "network", workers=2).start()
    try:
        port = yaml.safe_load((net.state / "worker-2.yaml").read_text())["worker"][
            "controller_port"]
        restart(net, "controller", step_labels={"chunk:*/hello": ["special"]},
                label_wait_seconds=20)
        before = joins(net)
        restart(net, "worker-2", labels=["special"])
        wait_for(lambda: joins(net) > before, 30, "worker-2 to join with its label")
        checkout = net.checkout(tmp_path / "defs")
        built = net.initiator(checkout, SYSTEM)
        assert built.returncode == 0, built.stdout + built.stderr
        hello = [a for a in net.attempts() if a["cache_key"] == net.node_key(HELLO)]
        assert [a["worker"] for a in hello] == ["worker-2"]

        # worker-2 away: it runs, but cannot reach the controller (nothing listens there).
        restart(net, "worker-2", controller_port=1)
        edit(checkout / "strata/example-apps/hello.morph", "build-commands:\n",
             "build-commands:\n- echo second\n")
        proc = net.initiator(checkout, SYSTEM, wait=False)
        rid = wait_for(lambda: _newest_building(net), 60, "the second request")
        status = wait_for(lambda: _says_waiting(net, rid), 30, "status to say what it waits for")
        assert f"{HELLO}: waiting for a worker with label(s) special" in status
        before = joins(net)
        restart(net, "worker-2", controller_port=port)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        hello = [a for a in net.attempts() if a["cache_key"] == net.node_key(HELLO)]
        assert [a["worker"] for a in hello] == ["worker-2"]

        # Away for longer than label_wait_seconds: the request fails, saying why.
        restart(net, "worker-2", controller_port=1)
        edit(checkout / "strata/example-apps/hello.morph", "- echo second\n", "- echo third\n")
        failed = net.initiator(checkout, SYSTEM, timeout=120)
        assert failed.returncode != 0
        assert (f"{HELLO} needs a x86_64 worker with label(s) special, and no connected "
                "worker has them") in failed.stdout + failed.stderr
        assert not [a for a in net.attempts() if a["cache_key"] == net.node_key(HELLO)]
    finally:
        net.stop()


def _newest_building(net) -> str | None:
    listing = net.client("list").stdout.splitlines()
    return next((line.split()[0] for line in listing if " building " in line), None)


def _says_waiting(net, rid: str) -> str | None:
    out = net.client("status", rid).stdout
    return out if "waiting for a worker" in out else None



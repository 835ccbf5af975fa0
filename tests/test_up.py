"""`distbuild up` across restarts and deaths: same ports, user branches kept, components
restarted when they die (each kind SIGKILLed by PID), and a build still works."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from distbuild import ssh
from tests.network_process import NetworkProcess, wait_for
from tests.trove_process import pid_alive

pytestmark = pytest.mark.slow

SYSTEM = "systems/example-system-x86_64.morph"


def settings_file(net: NetworkProcess, name: str) -> dict:
    (section,) = yaml.safe_load((net.state / name).read_text()).values()
    return section


def port_of(url: str) -> int:
    return int(re.search(r":(\d+)/?$", url).group(1))


def git(*args: str, cwd: Path | None = None, env: dict | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, check=True).stdout.strip()


def test_up_keeps_ports_settings_and_pushed_branches(tmp_path):
    net = NetworkProcess(tmp_path / "net", workers=1)
    net.start()
    try:
        first = dict(net.settings)
        trove, controller = settings_file(net, "trove.yaml"), settings_file(net, "controller.yaml")
        worker = settings_file(net, "worker-1.yaml")
        # Every settings file names the ports the others use: no port 0.
        assert trove["git_port"] == port_of(first["trove_git_url"])
        assert trove["http_port"] == port_of(first["artifact_cache_url"])
        assert trove["ssh_port"] == port_of(first["trove_ssh_url"])
        assert controller["initiator_port"] == first["controller_initiator_port"]
        assert worker["controller_port"] == controller["worker_port"] > 0
        known_hosts = Path(first["known_hosts"]).read_text()
        # A user pushes their own work to a repository `up` imported.
        work = tmp_path / "hello"
        git("clone", "-q", f"{first['trove_git_url']}/delta/hello", str(work))
        (work / "README").write_text("my own change\n")
        git("-c", "user.name=me", "-c", "user.email=me@127.0.0.1", "commit", "-qam", "mine",
            cwd=work)
        mine = git("rev-parse", "HEAD", cwd=work)
        git("push", "-q", f"{first['trove_ssh_url']}/delta/hello", "HEAD:refs/heads/master",
            cwd=work, env={"GIT_SSH_COMMAND": ssh.git_ssh_command(
                Path(first["identity"]), Path(first["known_hosts"]))})
    finally:
        net.stop()
    net.start()
    try:
        assert net.settings == first
        assert Path(first["known_hosts"]).read_text() == known_hosts
        assert settings_file(net, "controller.yaml") == controller
        assert settings_file(net, "worker-1.yaml") == worker
        heads = git("ls-remote", f"{first['trove_git_url']}/delta/hello", "refs/heads/master")
        assert heads.split()[0] == mine
    finally:
        net.stop()


def test_ports_are_reused_when_free_and_replaced_when_taken():
    from distbuild.network import PORTS, choose_ports

    first = choose_ports({})
    assert len(set(first.values())) == len(PORTS) and all(first.values())
    assert choose_ports(first) == first
    with socket.create_server(("127.0.0.1", first["initiator_port"])):
        again = choose_ports(first)
    assert again["initiator_port"] != first["initiator_port"]
    assert {k: v for k, v in again.items() if k != "initiator_port"} == {
        k: v for k, v in first.items() if k != "initiator_port"}
    assert choose_ports({"git_port": 0, "http_port": "x"})["git_port"] > 0


def current_pids(net: NetworkProcess) -> dict[str, int]:
    net.pids = json.loads((net.state / "run" / "pids.json").read_text())
    return net.pids


def ready_ports(net: NetworkProcess, name: str) -> dict:
    try:
        info = json.loads((net.state / "run" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in info.items() if k.endswith("_port")}


def test_up_restarts_each_kind_of_component_on_its_ports(tmp_path):
    net = NetworkProcess(tmp_path / "net", workers=2).start()
    try:
        ports = {name: ready_ports(net, name) for name in ("trove", "controller")}
        for name in ("trove", "controller", "worker-1"):
            old = current_pids(net)[name]
            joins = net.component_log("controller").count(f"worker {name}: arch ")
            os.kill(old, signal.SIGKILL)
            killed = time.monotonic()
            new = wait_for(lambda n=name, o=old: current_pids(net).get(n, o) != o
                           and current_pids(net)[n], 10, f"{name} to be started again")
            assert time.monotonic() - killed < 2.0, f"{name} took too long to come back"
            assert pid_alive(new) and not pid_alive(old)
            assert f"{name} (PID {old}) exited with signal SIGKILL" in net.log()
            if name in ports:
                # Started again from its own settings file, it listens where it did.
                wait_for(lambda n=name: ready_ports(net, n) == ports[n], 30,
                         f"{name} to listen on its ports again")
            else:
                wait_for(lambda n=name, j=joins: net.component_log("controller").count(
                    f"worker {n}: arch ") > j, 30, f"{name} to join again")
        checkout = net.checkout(tmp_path / "defs")
        hello = checkout / "strata/example-apps/hello.morph"
        hello.write_text(hello.read_text().replace("build-commands:\n",
                                                   "build-commands:\n- echo after-kills\n", 1))
        proc = net.initiator(checkout, SYSTEM)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Artifact: " in proc.stdout
    finally:
        current_pids(net)
        net.stop()
    assert not [pid for pid in net.pids.values() if pid_alive(pid)]


@pytest.mark.parametrize("unit", ["distbuild-controller.service", "distbuild-worker.service"])
def test_deployed_services_restart_on_failure(unit):
    import configparser

    from tests.conftest import PROJECT

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(PROJECT / "deploy" / unit)
    assert parser["Service"]["Restart"] == "on-failure"
    assert float(parser["Service"]["RestartSec"]) <= 2


def test_no_component_outlives_a_killed_up(tmp_path):
    net = NetworkProcess(tmp_path / "net", workers=1).start()
    try:
        pids = current_pids(net)
        net.proc.send_signal(signal.SIGKILL)
        net.proc.wait()
        wait_for(lambda: not [p for p in pids.values() if pid_alive(p)], 15,
                 "the components to go with `up`")
    finally:
        net.stop()

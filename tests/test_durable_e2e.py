"""Nothing lost when a part stops: real processes killed with real signals mid-build.

One network (`distbuild up`, which starts a component again within 2 s of its
death, on the same ports) serves every test in order; the last checks the
history they all left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.network_process import (
    NetworkProcess,
    edit,
    processes_with,
    restart_workers,
    wait_for,
)
from tests.trove_process import pid_alive

pytestmark = pytest.mark.slow

SYSTEM = "systems/example-system-x86_64.morph"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    network = NetworkProcess(tmp_path_factory.mktemp("durable"), workers=2).start()
    yield network
    network.stop()


def request_id(text: str) -> str:
    return re.search(r"Request ID: ([0-9a-f]+)", text).group(1)


def slow_hello(net, tmp_path, marker: str) -> tuple[Path, object]:
    """A checkout whose hello chunk sleeps `marker` seconds between two echoes; its build."""
    checkout = net.checkout(tmp_path / "defs")
    edit(checkout / "strata/example-apps/hello.morph", "build-commands:\n",
         f"build-commands:\n- echo before-{marker}; sleep {marker}; echo after-{marker}\n")
    proc = net.initiator(checkout, SYSTEM, wait=False)
    wait_for(lambda: processes_with(f"sleep {marker}"), 90, "hello to start")
    return checkout, proc


def running_attempt(net, node: str) -> dict:
    key = wait_for(lambda: net.node_key(node), 10, f"{node}'s key")
    return wait_for(lambda: next((a for a in net.attempts()
                                  if a["cache_key"] == key and a["outcome"] == "running"), None),
                    10, f"{node}'s attempt")


def no_tracebacks(net) -> None:
    for name in ("trove", "controller", "worker-1", "worker-2"):
        assert "Traceback" not in net.component_log(name), name


def test_controller_killed_mid_step_resumes_and_the_step_runs_once(net, tmp_path):
    checkout, proc = slow_hello(net, tmp_path, "6.61")
    hello = running_attempt(net, "chunk:example-apps/hello")
    built_before = {a["cache_key"] for a in net.attempts() if a["outcome"] == "built"}
    assert built_before  # hello's dependencies
    os.kill(net.pid("controller"), signal.SIGKILL)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert "Lost the controller" in out and "Following request" in out
    assert "Traceback" not in out
    log = (checkout / "build-step-hello.log").read_text()
    # The step ran once, and its log holds everything once.
    assert log.count("+ echo before-6.61; sleep 6.61; echo after-6.61") == 1, log
    assert len(re.findall(r"Z before-6\.61$", log, re.M)) == 1, log
    assert len(re.findall(r"Z after-6\.61$", log, re.M)) == 1, log
    tries = [a for a in net.attempts() if a["cache_key"] == hello["cache_key"]]
    assert [(a["job"], a["outcome"]) for a in tries] == [(hello["job"], "built")]
    # What was built before the kill was not built again.
    built = Counter(a["cache_key"] for a in net.attempts() if a["outcome"] == "built")
    assert all(built[k] == 1 for k in built_before)
    rid = request_id(out)
    status = net.client("status", rid)
    assert f"Request {rid}: finished" in status.stdout and "running" not in status.stdout
    assert "kept on worker-" in net.component_log("controller")
    no_tracebacks(net)


def test_worker_sigterm_drains_and_twice_hands_back(net, tmp_path):
    # Once: the worker finishes its step, then leaves (and `up` starts it again).
    _, proc = slow_hello(net, tmp_path / "once", "3.31")
    first = running_attempt(net, "chunk:example-apps/hello")
    victim = first["worker"]
    pid = net.pid(victim)
    os.kill(pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert [(a["worker"], a["outcome"]) for a in net.attempts()
            if a["cache_key"] == first["cache_key"]] == [(victim, "built")]
    wait_for(lambda: not pid_alive(pid), 10, f"{victim} to leave once drained")
    assert "draining" in net.component_log(victim)

    # Twice: it stops at once, hands the step back, and the step runs elsewhere.
    wait_for(lambda: net.pid(victim) != pid, 10, f"{victim} to be started again")
    _, proc = slow_hello(net, tmp_path / "twice", "8.08")
    second = running_attempt(net, "chunk:example-apps/hello")
    victim = second["worker"]
    os.kill(net.pid(victim), signal.SIGTERM)
    time.sleep(0.5)
    os.kill(net.pid(victim), signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert "chunk:example-apps/hello will run again" in out
    tries = [(a["worker"], a["outcome"]) for a in net.attempts()
             if a["cache_key"] == second["cache_key"]]
    other = "worker-2" if victim == "worker-1" else "worker-1"
    assert tries == [(victim, "handed-back"), (other, "built")]
    no_tracebacks(net)


def test_the_drain_time_running_out_hands_the_step_back(net, tmp_path):
    restart_workers(net, drain_seconds=2)
    _, proc = slow_hello(net, tmp_path, "7.07")
    attempt = running_attempt(net, "chunk:example-apps/hello")
    started = time.monotonic()
    os.kill(net.pid(attempt["worker"]), signal.SIGTERM)
    wait_for(lambda: next((a for a in net.attempts() if a["job"] == attempt["job"]
                           and a["outcome"] == "handed-back"), None), 15, "the hand-back")
    assert time.monotonic() - started < 6
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert "drain time of 2 s ran out" in net.component_log(attempt["worker"])


def test_a_fifty_megabyte_line_is_cut_and_the_build_goes_on(net, tmp_path):
    checkout = net.checkout(tmp_path / "defs")
    edit(checkout / "strata/example-apps/hello.morph", "build-commands:\n",
         "build-commands:\n- head -c 50000000 /dev/zero | tr '\\\\0' x; echo; echo after-long\n")
    proc = net.initiator(checkout, SYSTEM, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (checkout / "build-step-hello.log").read_text()
    assert "[distbuild: line cut, " in log and "after-long" in log
    assert len(log) < 5 << 20
    # Not re-run: the worker's link stayed within the message limit.
    assert "will run again" not in proc.stdout
    no_tracebacks(net)


def test_trove_killed_mid_upload_is_retried(net, tmp_path):
    checkout = net.checkout(tmp_path / "defs")
    edit(checkout / "strata/example-apps/motd.morph", "install-commands:\n",
         "install-commands:\n- head -c 300000000 /dev/urandom > \"$DESTDIR/big-random\"\n")
    proc = net.initiator(checkout, SYSTEM, "motd", wait=False)
    uploads = net.state / "trove" / "artifacts" / "tmp"
    wait_for(lambda: any(p.name.startswith("upload-") for p in uploads.iterdir()), 120,
             "the upload to start")
    trove = net.pid("trove")
    os.kill(trove, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert net.pid("trove") != trove
    # The restarted trove dropped the half upload; the retry stored it whole.
    assert not [p for p in uploads.iterdir() if p.name.startswith("upload-")]
    motd = net.node_key("chunk:example-apps/motd")
    assert [a["outcome"] for a in net.attempts() if a["cache_key"] == motd] == ["built"]
    no_tracebacks(net)


def test_attach_follows_a_detached_request_and_log_prints_any_step(net, tmp_path):
    checkout = net.checkout(tmp_path / "defs")
    edit(checkout / "strata/example-apps/hello.morph", "build-commands:\n",
         "build-commands:\n- echo attach-me; sleep 2.22\n")
    submitted = net.initiator(checkout, SYSTEM, "--detach")
    assert submitted.returncode == 0, submitted.stdout
    rid = request_id(submitted.stdout)
    attach = net.client("attach", rid, "--initiator-step-output-dir", str(tmp_path / "logs"))
    assert attach.returncode == 0, attach.stdout + attach.stderr
    assert "Build finished" in attach.stdout and "Artifact: " in attach.stdout
    logged = net.client("log", rid, "hello")
    assert logged.returncode == 0, logged.stderr
    assert "+ echo attach-me; sleep 2.22" in logged.stdout and "built" in logged.stderr

    failing = net.checkout(tmp_path / "failing")
    edit(failing / "strata/example-apps/hello.morph", "build-commands:\n",
         "build-commands:\n- echo about to fail; exit 3\n")
    proc = net.initiator(failing, SYSTEM)
    assert proc.returncode == 1
    rid = request_id(proc.stdout)
    logged = net.client("log", rid, "chunk:example-apps/hello")
    assert logged.returncode == 0, logged.stderr
    assert "about to fail" in logged.stdout and "failed" in logged.stderr
    status = net.client("status", rid)
    assert "failed" in status.stdout and "running" not in status.stdout
    unknown = net.client("log", rid, "no-such-step")
    assert unknown.returncode == 1 and "no step 'no-such-step'" in unknown.stderr


def test_a_worker_whose_link_breaks_keeps_its_step(net, tmp_path):
    import yaml

    from distbuild import keygen, ssh
    from tests.tcp_proxy import DroppingProxy

    port = yaml.safe_load((net.state / "worker-1.yaml").read_text())["worker"]["controller_port"]
    proxy = DroppingProxy(port)
    keys = keygen.KeySet.in_dir(net.state / "keys")
    with open(keys.known_hosts, "a") as f:
        f.write(ssh.known_hosts_line("127.0.0.1", proxy.port,
                                     ssh.public_key_of(keys.controller_host_key)) + "\n")
    restart_workers(net, controller_port=proxy.port)
    try:
        checkout, proc = slow_hello(net, tmp_path, "8.18")
        attempt = running_attempt(net, "chunk:example-apps/hello")
        time.sleep(1)
        assert proxy.drop() == 2
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out
        assert "will run again" not in out
        tries = [a for a in net.attempts() if a["cache_key"] == attempt["cache_key"]]
        assert [(a["job"], a["outcome"]) for a in tries] == [(attempt["job"], "built")]
        log = (checkout / "build-step-hello.log").read_text()
        assert len(re.findall(r"Z before-8\.18$", log, re.M)) == 1
        assert len(re.findall(r"Z after-8\.18$", log, re.M)) == 1
        assert f"job {attempt['job']}: kept on {attempt['worker']}" in \
            net.component_log("controller")
    finally:
        restart_workers(net, controller_port=port)
        proxy.close()
    no_tracebacks(net)


def test_history_shows_every_attempt_once_with_its_outcome(net):
    attempts = net.attempts()
    jobs = [a["job"] for a in attempts]
    assert len(jobs) == len(set(jobs))
    assert not [a for a in attempts if a["outcome"] == "running"]
    assert {a["outcome"] for a in attempts} >= {"built", "handed-back", "failed"}
    listing = net.client("list")
    rids = re.findall(r"^([0-9a-f]{12}) ", listing.stdout, re.M)
    assert len(rids) >= 6
    for rid in rids:
        record = json.loads(net.client("status", rid, "--json").stdout)
        assert record["state"] in ("finished", "failed", "cancelled")
        assert record["running"] == []
        shown = [a["job"] for a in record["attempts"]]
        assert len(shown) == len(set(shown)) and set(shown) <= set(jobs)
        assert all(a["outcome"] != "running" for a in record["attempts"])

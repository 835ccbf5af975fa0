"""End to end: a real trove, controller and two workers as processes on 127.0.0.1.

Each test runs real initiators in a git checkout of the example definitions;
changes a test makes to its checkout stay uncommitted, so they also show that
the initiator builds the exact state of the checkout.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from distbuild import ssh
from tests.network_process import NetworkProcess, edit, processes_with, wait_for

pytestmark = pytest.mark.slow

SYSTEM = "systems/example-system-x86_64.morph"
MINIMAL = "systems/example-minimal-x86_64.morph"


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    net = NetworkProcess(tmp_path_factory.mktemp("network"), workers=2).start()
    yield net
    net.stop()
    assert not [pid for pid in net.pids.values() if _alive(pid)]


def _alive(pid: int) -> bool:
    from tests.trove_process import pid_alive
    return pid_alive(pid)


def request_id(output: str) -> str:
    return re.search(r"Request ID: ([0-9a-f]+)", output).group(1)


def test_example_system_builds_on_two_workers_with_logs(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    proc = network.initiator(checkout, SYSTEM)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Need to build 8/8 artifacts" in out
    artifacts = re.findall(r"^Artifact: (\S+)$", out, re.M)
    assert len(artifacts) == 1 and artifacts[0].endswith("-rootfs")
    # The artifact is the system: its hello links libgreet and prints what hello.c says.
    tarball = tmp_path / "system.tar.gz"
    urllib.request.urlretrieve(artifacts[0], tarball)
    root = tmp_path / "root"
    with tarfile.open(tarball) as tar:
        tar.extractall(root, filter="tar")
    hello = subprocess.run([root / "usr/bin/hello"], capture_output=True, text=True,
                           env={"LD_LIBRARY_PATH": str(root / "usr/lib")})
    source = (Path(__file__).parent.parent / "morphs/sources/libgreet/greet.c").read_text()
    greeting = re.search(r'return "([^"]+)";', source).group(1)
    assert hello.returncode == 0 and hello.stdout.strip() == greeting
    # Two workers built steps at the same time.
    attempts = [a for a in network.attempts() if a["outcome"] == "built"]
    assert {a["worker"] for a in attempts} == {"worker-1", "worker-2"}
    overlapping = [(a, b) for a in attempts for b in attempts
                   if a["worker"] != b["worker"] and a["started"] < b["ended"]
                   and b["started"] < a["ended"]]
    assert overlapping, attempts
    # A log per step, with the commands echoed and their output.
    logs = sorted(p.name for p in checkout.glob("build-step-*.log"))
    assert logs == sorted(["build-step-libgreet.log", "build-step-base-files.log",
                           "build-step-hello.log", "build-step-greeting-tool.log",
                           "build-step-motd.log", "build-step-stratum-example-core.log",
                           "build-step-stratum-example-apps.log",
                           "build-step-system-example-system-x86_64.log"])
    hello_log = (checkout / "build-step-hello.log").read_text()
    assert '+ make PREFIX="$PREFIX"' in hello_log
    assert "hello.c" in hello_log and "-lgreet" in hello_log  # the compiler's command line
    assert re.search(r"Started building chunk:example-apps/hello on worker-\d", hello_log)
    assert "Finished building chunk:example-apps/hello" in hello_log


def test_second_build_builds_nothing(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    first = network.initiator(checkout, SYSTEM)
    assert first.returncode == 0, first.stdout + first.stderr
    before = len(network.attempts())
    # How fast a cached rebuild is belongs to benchmarks/network_bench.py, not a timed test.
    again = network.initiator(checkout, SYSTEM, "--fetch-cached-logs")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Need to build 0/8 artifacts" in again.stdout
    assert "Artifact: " in again.stdout
    assert len(network.attempts()) == before
    # --fetch-cached-logs brought back how the cached steps were built.
    assert "Fetched 8 log(s) of cached steps" in again.stdout
    assert "=== build commands ===" in (checkout / "build-step-hello.log").read_text()


def test_overlapping_requests_share_steps(network, tmp_path):
    one = network.checkout(tmp_path / "one")
    two = network.checkout(tmp_path / "two")
    for checkout in (one, two):  # the same uncommitted change in both checkouts
        edit(checkout / "strata/example-core/libgreet.morph", "install-commands:",
             "post-install-commands:\n- sleep 2.22\ninstall-commands:")
    a = network.initiator(one, SYSTEM, wait=False)
    wait_for(lambda: processes_with("sleep 2.22"), 60, "libgreet to start")
    b = network.initiator(two, MINIMAL, wait=False)
    out_a, _ = a.communicate(timeout=120)
    out_b, _ = b.communicate(timeout=120)
    assert a.returncode == 0, out_a
    assert b.returncode == 0, out_b
    rid_a, rid_b = request_id(out_a), request_id(out_b)
    assert rid_a != rid_b
    # b joined libgreet while it ran for a, and followed it in its own log file.
    assert "Started building chunk:example-core/libgreet" in out_b
    assert "sleep 2.22" in (two / "build-step-libgreet.log").read_text()
    built = Counter(x["cache_key"] for x in network.attempts() if x["outcome"] == "built")
    assert built and max(built.values()) == 1


def test_partial_build_of_components_with_logs_elsewhere(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    edit(checkout / "strata/example-apps/hello.morph", "install-commands:\n",
         "install-commands:\n- echo partial build\n")
    logs = tmp_path / "logs"
    proc = network.initiator(checkout, SYSTEM, "hello", "--initiator-step-output-dir",
                             str(logs))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    urls = re.findall(r"^Artifact: (\S+)$", proc.stdout, re.M)
    # The chunk's own artifacts, and nothing of the strata or the system.
    assert urls and all(".chunk.hello-" in u for u in urls)
    assert "Started building system:" not in proc.stdout
    names = {p.name for p in logs.iterdir()}
    # hello and whatever it needed that was not cached yet; never what needs hello.
    assert "build-step-hello.log" in names
    assert names <= {"build-step-hello.log", "build-step-libgreet.log",
                     "build-step-base-files.log", "build-step-stratum-example-core.log"}
    assert not list(checkout.glob("build-step-*.log"))
    unknown = network.initiator(checkout, SYSTEM, "no-such-chunk")
    assert unknown.returncode == 1
    assert "component 'no-such-chunk' is neither a stratum nor a chunk" in unknown.stdout


def test_failing_chunk_fails_the_build_and_shows_its_log(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    edit(checkout / "strata/example-apps/hello.morph", "build-commands:\n",
         "build-commands:\n- echo about to fail >&2; exit 3\n")
    proc = network.initiator(checkout, SYSTEM)
    assert proc.returncode == 1, proc.stdout
    out = proc.stdout
    assert "Failed to build chunk:example-apps/hello on worker-" in out
    assert "exited with status 3" in out
    assert "    " in out and "about to fail" in out  # its last log lines
    log = checkout / "build-step-hello.log"
    assert f"Full log: {log.name}" in out or f"Full log: {log}" in out
    text = log.read_text()
    assert "+ echo about to fail >&2; exit 3" in text and "Build of chunk:example-apps/hello failed." in text
    assert "Failed to build systems/example-system-x86_64.morph: chunk:example-apps/hello failed" in out
    assert "Traceback" not in proc.stdout + proc.stderr


def _start_slow_build(network, tmp_path, marker: str):
    checkout = network.checkout(tmp_path / "defs")
    edit(checkout / "strata/example-apps/motd.morph", "install-commands:\n",
         f"install-commands:\n- sleep {marker}\n")
    proc = network.initiator(checkout, SYSTEM, wait=False)
    wait_for(lambda: processes_with(f"sleep {marker}"), 60, "the slow step to start")
    return proc


def test_cancel_stops_the_workers_processes(network, tmp_path):
    proc = _start_slow_build(network, tmp_path, "77.7")
    pids = processes_with("sleep 77.7")
    head = ""
    while "Request ID" not in head:
        head += proc.stdout.readline()
    rid = request_id(head)
    # While it runs, the request's keys are pinned against garbage collection.
    assert f"request-{rid}" in trove_pins(network)
    cancel = network.client("cancel", rid)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    gone_at = wait_for(lambda: not any(_alive(p) for p in pids) and time.monotonic(), 5,
                       "the step's processes to go")
    assert gone_at
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "was cancelled" in rest
    status = network.client("status", rid)
    assert "cancelled" in status.stdout
    wait_for(lambda: f"request-{rid}" not in trove_pins(network), 5, "the pin to go")


def trove_pins(network) -> list[str]:
    import json
    with urllib.request.urlopen(network.settings["artifact_cache_url"] + "2.0/status") as r:
        return json.load(r)["pins"]


def test_ctrl_c_cancels_the_request(network, tmp_path):
    proc = _start_slow_build(network, tmp_path, "88.8")
    pids = processes_with("sleep 88.8")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "Cancelling request" in out and "Traceback" not in out
    wait_for(lambda: not any(_alive(p) for p in pids), 5, "the step's processes to go")


def test_an_initiator_whose_output_waits_keeps_its_request(network, tmp_path):
    """Its stdout a full pipe (`distbuild ... | less`, nobody scrolling): the initiator
    stops reading the link for longer than the controller's 8 s of allowed silence,
    and the request it owns must go on, not be cancelled as if it had gone."""
    checkout = network.checkout(tmp_path / "defs")
    # hello (and greeting-tool after it) finish early, each a line to print; motd,
    # beside them on the other worker, goes on for 16 s.
    edit(checkout / "strata/example-apps/hello.morph", "install-commands:\n",
         "install-commands:\n- echo waits >/dev/null\n")
    edit(checkout / "strata/example-apps/motd.morph", "install-commands:\n",
         "install-commands:\n- sleep 16.25\n")
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen(
        [sys.executable, "-m", "distbuild", "--config", str(network.config), SYSTEM],
        cwd=checkout, env=network.env, stdout=write, stderr=subprocess.STDOUT)
    try:
        head = b""
        while b"Started building chunk:example-apps/motd" not in head:
            chunk = os.read(read, 4096)
            assert chunk, head.decode()
            head += chunk
        wait_for(lambda: processes_with("sleep 16.25"), 30, "motd to start")
        # Fill the pipe: the initiator's next line (hello finishing) blocks it. Through
        # a file description of our own, since O_NONBLOCK on the initiator's would
        # make its writes fail rather than wait.
        os.close(write)
        write = os.open(f"/proc/self/fd/{read}", os.O_WRONLY | os.O_NONBLOCK)
        for size in (512, 1):  # (a write of up to 4 KiB goes in whole or not at all)
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(write, b"." * size)
        os.close(write)
        write = -1
        wait_for(lambda: "pipe_write" in Path(f"/proc/{proc.pid}/wchan").read_text(), 20,
                 "the initiator to wait on its output")
        blocked = time.monotonic()
        wait_for(lambda: not processes_with("sleep 16.25"), 30, "motd to end")
        silent = time.monotonic() - blocked
        still_blocked = "pipe_write" in Path(f"/proc/{proc.pid}/wchan").read_text()
        rest = b""
        while chunk := os.read(read, 65536):
            rest += chunk
        out = (head + rest).decode()
        assert proc.wait(timeout=60) == 0, out
        assert "was cancelled" not in out and re.search(r"^Artifact: ", out, re.M), out
        # It read nothing from the link for longer than the controller allows.
        assert silent > 9 and still_blocked
    finally:
        if write >= 0:
            os.close(write)
        os.close(read)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_detach_status_and_list(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    edit(checkout / "strata/example-apps/motd.morph", "install-commands:\n",
         "install-commands:\n- sleep 1\n")
    proc = network.initiator(checkout, SYSTEM, "--detach")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rid = request_id(proc.stdout)
    assert f"distbuild status {rid}" in proc.stdout

    def finished():
        status = network.client("status", rid)
        return status.stdout if f"Request {rid}: finished" in status.stdout else None

    status = wait_for(finished, 60, "the detached request to finish")
    assert "Artifact: http://127.0.0.1:" in status
    listing = network.client("list")
    assert listing.returncode == 0 and rid in listing.stdout


def test_definitions_only_from_the_trove(network, tmp_path):
    from distbuild import link
    from distbuild.protocol import messages as m
    s = network.settings
    conn = link.connect("127.0.0.1", s["controller_initiator_port"], Path(s["identity"]),
                        Path(s["known_hosts"]), "initiator", "mallory")
    try:
        conn.send(m.BuildRequest(definitions_repo="file:///etc", definitions_commit="0" * 40,
                                 system=SYSTEM))
        answers = [conn.receive(timeout=10) for _ in range(3)]
    finally:
        conn.close()
    failed = [a for a in answers if isinstance(a, m.BuildFailed)]
    assert failed and "definitions must come from this network's trove" in failed[0].reason


def test_unauthorized_initiator_key_is_a_clear_error(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    stranger = tmp_path / "stranger"
    ssh.generate_keypair(stranger)
    proc = network.initiator(checkout, SYSTEM, "--identity", str(stranger))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distbuild: error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_worker_killed_mid_step_is_re_run_elsewhere(tmp_path):
    net = NetworkProcess(tmp_path / "net", workers=2).start()
    try:
        checkout = net.checkout(tmp_path / "defs")
        edit(checkout / "strata/example-apps/hello.morph", "build-commands:\n",
             "build-commands:\n- sleep 3.33\n")
        proc = net.initiator(checkout, SYSTEM, wait=False)
        first = wait_for(lambda: processes_with("sleep 3.33"), 60, "hello to start")
        hello_key = wait_for(lambda: net.node_key("chunk:example-apps/hello"), 10, "hello's key")
        victim = wait_for(lambda: next((a["worker"] for a in net.attempts()
                                        if a["cache_key"] == hello_key
                                        and a["outcome"] == "running"), None),
                          10, "hello's attempt")
        os.kill(net.pids[victim], signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert "chunk:example-apps/hello will run again" in out
        assert "Artifact: " in out
        tries = [a for a in net.attempts() if a["cache_key"] == hello_key]
        assert [(a["worker"], a["outcome"]) for a in tries] == [
            (victim, "lost"), (next(w for w in ("worker-1", "worker-2") if w != victim), "built")]
        # The killed worker's sandbox died with it (bwrap --die-with-parent).
        wait_for(lambda: not any(_alive(p) for p in first), 5, "the lost step's processes")
    finally:
        net.stop()

"""What a morph user meets first, through the CLI against a real network (`distbuild up`).

The morph way (no settings file: the user's own ~/.ssh), mistyped commands, a
missing system file, keys and troves that fail, ports that are not the
controller's, the snapshot's contents and the step logs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from distbuild import ssh
from tests.conftest import run_distbuild
from tests.network_process import NetworkProcess
from tests.tcp_proxy import CuttingProxy

pytestmark = pytest.mark.slow

MINIMAL = "systems/example-minimal-x86_64.morph"
SYSTEM = "systems/example-system-x86_64.morph"


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    net = NetworkProcess(tmp_path_factory.mktemp("network"), workers=2).start()
    yield net
    net.stop()


def morph_home(network: NetworkProcess, root: Path, known_hosts: str | None = None) -> Path:
    """A HOME holding only .ssh/: the initiator's key as id_ed25519 and a known_hosts that
    trusts the controller's initiator port (and nothing of the trove)."""
    home = root / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_ed25519"
    shutil.copy(network.settings["identity"], key)
    key.chmod(0o600)
    if known_hosts is None:
        controller_key = ssh.public_key_of(network.state / "keys" / "controller_host_key")
        known_hosts = ssh.known_hosts_line("127.0.0.1", controller_port(network),
                                           controller_key) + "\n"
    (home / ".ssh" / "known_hosts").write_text(known_hosts)
    return home


def controller_port(network: NetworkProcess) -> int:
    return network.settings["controller_initiator_port"]


def morph_build(network: NetworkProcess, home: Path, checkout: Path, *args: str):
    """`distbuild --controller-initiator-address=127.0.0.1 ARGS`, as morph users type it."""
    return run_distbuild("--controller-initiator-address=127.0.0.1",
                         f"--controller-initiator-port={controller_port(network)}", *args,
                         cwd=checkout, env={"HOME": str(home)}, timeout=180)


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("distbuild: error: ")
    return lines[0].removeprefix("distbuild: error: ")


def snapshot_refs(network: NetworkProcess) -> list[str]:
    url = f"{network.settings['trove_git_url']}/{network.settings['definitions_repo']}"
    out = subprocess.run(["git", "ls-remote", url, "refs/distbuild/snapshots/*"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(out.split())


def request_count(network: NetworkProcess) -> int:
    proc = network.client("list")
    assert proc.returncode == 0, proc.stderr
    return sum(1 for line in proc.stdout.splitlines() if re.match(r"[0-9a-f]{12}  ", line))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_morph_way_builds_with_nothing_but_dot_ssh(network, tmp_path):
    home = morph_home(network, tmp_path)
    checkout = network.checkout(tmp_path / "defs")
    (checkout / "NOTES").write_text("an uncommitted change\n")
    proc = morph_build(network, home, checkout, MINIMAL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Uncommitted changes are included" in proc.stdout
    assert re.search(r"^Artifact: http://127\.0\.0\.1:\d+/\S+-rootfs$", proc.stdout, re.M)
    # Nothing was written beside the user's two ssh files.
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == [
        ".ssh", ".ssh/id_ed25519", ".ssh/known_hosts"]


def test_morph_way_finds_id_ecdsa_and_id_rsa_too(network, tmp_path):
    home = morph_home(network, tmp_path)
    checkout = network.checkout(tmp_path / "defs")
    authorized = [network.state / "keys" / "initiator_authorized_keys",
                  network.state / "keys" / "trove_authorized_keys"]
    for kind in ("ecdsa", "rsa"):
        for old in (home / ".ssh").glob("id_*"):
            old.unlink()
        key = home / ".ssh" / f"id_{kind}"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key)], check=True)
        for path in authorized:
            path.write_text(path.read_text() + Path(f"{key}.pub").read_text())
        proc = morph_build(network, home, checkout, MINIMAL)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unknown_and_changed_controller_host_keys_say_what_to_add(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    controller_key = ssh.public_key_of(network.state / "keys" / "controller_host_key")
    line = ssh.known_hosts_line("127.0.0.1", controller_port(network), controller_key)
    unknown = one_error_line(morph_build(network, morph_home(network, tmp_path / "a", ""),
                                         checkout, MINIMAL))
    assert "unknown host key" in unknown and controller_key.fingerprint in unknown
    assert unknown.endswith(f"add this line to {tmp_path}/a/home/.ssh/known_hosts: {line}")
    impostor = ssh.generate_keypair(tmp_path / "impostor")
    stale = ssh.known_hosts_line("127.0.0.1", controller_port(network), impostor) + "\n"
    changed = one_error_line(morph_build(network, morph_home(network, tmp_path / "b", stale),
                                         checkout, MINIMAL))
    assert "HOST KEY CHANGED" in changed and controller_key.fingerprint in changed
    assert changed.endswith(f"replace its line with: {line}")


def test_a_changed_trove_host_key_stops_the_push_saying_what_to_replace(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    (checkout / "NOTES").write_text("not on the trove yet\n")
    before = snapshot_refs(network)
    trove = urllib.parse.urlsplit(network.settings["trove_ssh_url"])
    trove_key = ssh.public_key_of(network.state / "keys" / "trove_host_key")
    line = ssh.known_hosts_line("127.0.0.1", trove.port, trove_key)
    impostor = ssh.generate_keypair(tmp_path / "impostor")
    stale = ssh.known_hosts_line("127.0.0.1", trove.port, impostor) + "\n"
    # With the settings file (the push starts before the controller answers) ...
    known = Path(network.settings["known_hosts"]).read_text().replace(line + "\n", stale)
    (tmp_path / "known_hosts").write_text(known)
    (tmp_path / "stale.yaml").write_text(yaml.safe_dump(
        dict(network.settings, known_hosts=str(tmp_path / "known_hosts"))))
    proc = run_distbuild("--config", str(tmp_path / "stale.yaml"), MINIMAL, cwd=checkout)
    # ... and the morph way (the trove's address comes from the controller's welcome).
    controller_key = ssh.public_key_of(network.state / "keys" / "controller_host_key")
    home = morph_home(network, tmp_path / "m", ssh.known_hosts_line(
        "127.0.0.1", controller_port(network), controller_key) + "\n" + stale)
    for error in (one_error_line(proc), one_error_line(morph_build(network, home, checkout,
                                                                   MINIMAL))):
        assert "HOST KEY CHANGED" in error and trove_key.fingerprint in error
        assert error.endswith(f"replace its line with: {line}")
    assert snapshot_refs(network) == before


@pytest.mark.parametrize("typed, meant", [("stauts", "status"), ("wrker", "worker"),
                                          ("lsit", "list"), ("queu", "queue")])
def test_mistyped_command_submits_nothing(network, tmp_path, typed, meant):
    checkout = network.checkout(tmp_path / "defs")
    (checkout / "NOTES").write_text("would be pushed\n")
    before = (request_count(network), snapshot_refs(network))
    proc = run_distbuild(typed, "0123456789ab", "--config", str(network.config), cwd=checkout)
    assert one_error_line(proc) == f"unknown command '{typed}'; did you mean '{meant}'?"
    assert (request_count(network), snapshot_refs(network)) == before


def test_missing_system_file_is_refused_before_pushing(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    (checkout / "NOTES").write_text("would be pushed\n")
    before = (request_count(network), snapshot_refs(network))
    proc = network.initiator(checkout, "systems/foo.morph")
    assert one_error_line(proc) == "systems/foo.morph: no such file in this checkout"
    assert (request_count(network), snapshot_refs(network)) == before


def test_key_the_trove_does_not_know(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    # A state the trove does not hold yet: one it holds is not pushed again.
    (checkout / "unpushed.txt").write_text(f"{tmp_path}\n")
    stranger = tmp_path / "stranger"
    pub = ssh.generate_keypair(stranger)
    # The controller knows the key; the trove does not.
    authorized = network.state / "keys" / "initiator_authorized_keys"
    authorized.write_text(authorized.read_text() + pub.line() + "\n")
    proc = network.initiator(checkout, MINIMAL, "--identity", str(stranger))
    message = one_error_line(proc)
    assert message.endswith(f": the trove refused key {stranger} (it is not among the "
                            "initiator keys)"), message


def test_trove_closing_mid_push(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    (checkout / "blob.bin").write_bytes(os.urandom(3 << 20))  # a pack of some megabytes
    trove_ssh = int(network.settings["trove_ssh_url"].rsplit(":", 1)[1])
    proxy = CuttingProxy(trove_ssh, cut_after=256 << 10)
    try:
        proc = run_distbuild("--config", str(via_proxy(network, proxy, tmp_path / "cut.yaml")),
                             MINIMAL, cwd=checkout)
    finally:
        proxy.close()
    message = one_error_line(proc)
    assert message.endswith(": the trove closed the connection while receiving the "
                            "definitions"), message
    assert proxy.cuts >= 1


def via_proxy(network: NetworkProcess, proxy: CuttingProxy, path: Path) -> Path:
    """network.yaml with the trove's SSH URL pointing at `proxy`."""
    settings = dict(network.settings, trove_ssh_url=f"ssh://git@127.0.0.1:{proxy.port}")
    path.write_text(yaml.safe_dump(settings))
    return path


def test_a_push_longer_than_the_link_timeout_keeps_the_link(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    (checkout / "blob.bin").write_bytes(os.urandom(1 << 20))
    trove_ssh = int(network.settings["trove_ssh_url"].rsplit(":", 1)[1])
    # About 10 s for the push: longer than the 8 s after which the controller drops a
    # silent link.
    proxy = CuttingProxy(trove_ssh, upstream_rate=100 << 10)
    try:
        started = time.monotonic()
        proc = run_distbuild("--config", str(via_proxy(network, proxy, tmp_path / "slow.yaml")),
                             MINIMAL, cwd=checkout, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert time.monotonic() - started > 9
    finally:
        proxy.close()


@pytest.mark.parametrize("port", ["ssh", "http", "git"])
def test_controller_port_pointed_at_a_trove_port(network, tmp_path, port):
    checkout = network.checkout(tmp_path / "defs")
    url = network.settings[{"ssh": "trove_ssh_url", "http": "artifact_cache_url",
                            "git": "trove_git_url"}[port]]
    number = re.search(r":(\d+)/?$", url).group(1)
    proc = network.initiator(checkout, MINIMAL, "--controller-initiator-port", number)
    message = one_error_line(proc)
    assert message.startswith(f"controller 127.0.0.1:{number}: ")
    assert "not the controller" in message


def test_failed_step_without_output_has_no_dangling_heading(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    edit(checkout / "strata/example-core/libgreet.morph", "build-commands:\n",
         "build-commands:\n- exit 3\n")
    proc = network.initiator(checkout, MINIMAL)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [line for line in proc.stdout.splitlines() if "Failed to build chunk:" in line]
    assert len(failed) == 1
    assert failed[0].endswith("build command 'exit 3' exited with status 3"), failed[0]
    assert "last lines of output" not in proc.stdout


def test_second_up_on_a_held_state_dir_is_refused(network):
    before = network.config.read_bytes()
    proc = run_distbuild("up", "--state-dir", str(network.state), timeout=60)
    message = one_error_line(proc)
    assert f"another `distbuild up` (PID {network.proc.pid}) is running" in message
    assert network.config.read_bytes() == before
    assert network.client("list").returncode == 0


def test_snapshot_leaves_out_the_builds_own_logs(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    (checkout / "build-step-old.log").write_text("an earlier build\n")
    (checkout / "strata" / "build-step-deep.log").write_text("an earlier build\n")
    (checkout / "logs").mkdir()
    (checkout / "logs" / "notes.txt").write_text("in the step output dir\n")
    (checkout / "extra.morph-notes").write_text("a real change\n")
    proc = network.initiator(checkout, MINIMAL, "--initiator-step-output-dir", "logs")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    commit = re.search(r"Requesting build of \S+ ([0-9a-f]{40}) ", proc.stdout).group(1)
    url = f"{network.settings['trove_git_url']}/{network.settings['definitions_repo']}"
    subprocess.run(["git", "-C", str(checkout), "fetch", "-q", url,
                    f"refs/distbuild/snapshots/{commit}"], check=True)
    files = subprocess.run(["git", "-C", str(checkout), "ls-tree", "-r", "--name-only",
                            commit], capture_output=True, text=True, check=True).stdout.split()
    assert "extra.morph-notes" in files
    assert not [f for f in files if "build-step-" in f or f.startswith("logs/")], files


def test_rebuild_starts_each_log_afresh_naming_the_request(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    log = checkout / "build-step-libgreet.log"
    ids = []
    for marker in ("first-build", "second-build"):
        edit(checkout / "strata/example-core/libgreet.morph", "build-commands:\n",
             f"build-commands:\n- echo {marker}\n")
        proc = network.initiator(checkout, MINIMAL)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        ids.append(re.search(r"Request ID: ([0-9a-f]+)", proc.stdout).group(1))
    text = log.read_text()
    first = text.splitlines()[0]
    assert first.endswith(f"Log of chunk:example-core/libgreet for request {ids[1]}"), first
    assert ids[0] not in text
    assert text.count("Started building") == 1 and text.count("Log of chunk:") == 1


def test_status_json_prints_only_json(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    proc = network.initiator(checkout, MINIMAL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rid = re.search(r"Request ID: ([0-9a-f]+)", proc.stdout).group(1)
    status = network.client("status", "--json", rid)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["id"] == rid
    assert "Connecting to" in status.stderr


def test_a_state_the_trove_holds_is_not_pushed_again(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    (checkout / "pushed-once.txt").write_text(f"{tmp_path}\n")
    first = run_distbuild("--config", str(network.config), MINIMAL, cwd=checkout)
    assert first.returncode == 0, first.stdout + first.stderr
    # The trove's SSH port now leads nowhere: a second push would fail.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = dict(network.settings, trove_ssh_url=f"ssh://git@127.0.0.1:{port}")
    (tmp_path / "nossh.yaml").write_text(yaml.safe_dump(settings))
    again = run_distbuild("--config", str(tmp_path / "nossh.yaml"), MINIMAL, cwd=checkout)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Build finished" in again.stdout

"""SSH links to a real controller process: keys both ways, handshake, heartbeats."""

import socket
import threading
import time

import paramiko
import pytest

from distbuild import link, ssh
from distbuild.protocol import PROTOCOL_VERSION, decode, encode
from distbuild.protocol.messages import Hello, ListRequests, Refused, RequestList, WorkerReady
from tests.controller_process import ControllerProcess


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    proc = ControllerProcess(tmp_path_factory.mktemp("controller"),
                             allowed_workers=["w1", "w2", "idle"]).start()
    yield proc
    proc.stop()


def connect(controller, role, name, identity=None, known_hosts=None, **kw):
    keys = controller.keys
    port = controller.initiator_port if role == "initiator" else controller.worker_port
    key = identity or (keys.initiator_key if role == "initiator" else keys.worker_key)
    return link.connect("127.0.0.1", port, key, known_hosts or keys.known_hosts, role, name, **kw)


def test_initiator_and_worker_are_welcomed(controller):
    initiator = connect(controller, "initiator", "alice")
    initiator.send(ListRequests())
    answer = initiator.receive(timeout=10)
    assert isinstance(answer, RequestList) and answer.requests == []
    worker = connect(controller, "worker", "w1")
    worker.send(WorkerReady(arch="x86_64", slots=2))
    deadline = time.monotonic() + 10
    while "w1: arch x86_64, 2 slot(s)" not in controller.log():
        assert time.monotonic() < deadline, controller.log()
        time.sleep(0.05)
    worker.close()
    initiator.close()


def test_unauthorized_initiator_key_is_refused(controller, tmp_path):
    stranger = tmp_path / "stranger"
    ssh.generate_keypair(stranger)
    with pytest.raises(link.LinkError) as info:
        connect(controller, "initiator", "mallory", identity=stranger)
    message = str(info.value)
    assert "refused this initiator key" in message and "SHA256:" in message
    assert f"127.0.0.1:{controller.initiator_port}" in message


def test_worker_key_cannot_use_the_initiator_port_and_vice_versa(controller):
    with pytest.raises(link.LinkError, match="refused this initiator key"):
        connect(controller, "initiator", "x", identity=controller.keys.worker_key)
    with pytest.raises(link.LinkError, match="refused this worker key"):
        connect(controller, "worker", "w2", identity=controller.keys.initiator_key)


def test_unlisted_worker_name_is_refused(controller):
    with pytest.raises(link.LinkError, match="'w9' is not in this controller's allowed_workers"):
        connect(controller, "worker", "w9")


def test_wrong_controller_host_key_is_refused_with_fingerprint(controller, tmp_path):
    impostor = tmp_path / "impostor"
    ssh.generate_keypair(impostor)
    known = tmp_path / "known_hosts"
    known.write_text(ssh.known_hosts_line("127.0.0.1", controller.initiator_port,
                                          ssh.public_key_of(impostor)) + "\n")
    real = ssh.public_key_of(controller.keys.controller_host_key)
    with pytest.raises(ssh.HostKeyError) as info:
        connect(controller, "initiator", "alice", known_hosts=known)
    assert "HOST KEY CHANGED" in str(info.value) and real.fingerprint in str(info.value)
    with pytest.raises(ssh.HostKeyError, match=r"unknown host key .* add this line"):
        connect(controller, "initiator", "alice", known_hosts=tmp_path / "empty")


def test_other_protocol_version_gets_a_clear_refusal(controller):
    transport = paramiko.Transport(socket.create_connection(("127.0.0.1",
                                                             controller.initiator_port)))
    try:
        transport.start_client(timeout=10)
        transport.auth_publickey("old", paramiko.PKey.from_path(
            str(controller.keys.initiator_key)))
        channel = transport.open_session()
        channel.invoke_subsystem("distbuild")
        channel.sendall(encode(Hello(protocol=PROTOCOL_VERSION + 1, role="initiator",
                                     name="future", software="distbuild 9")))
        channel.settimeout(10)
        data = b""
        while not data.endswith(b"\n"):
            data += channel.recv(4096)
        answer = decode(data.strip().splitlines()[-1], "controller")
        assert isinstance(answer, Refused)
        assert f"version {PROTOCOL_VERSION + 1} is not supported" in answer.reason
        assert f"speaks version {PROTOCOL_VERSION}" in answer.reason
    finally:
        transport.close()


def test_shell_and_exec_are_refused(controller):
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", controller.initiator_port, username="alice",
                   key_filename=str(controller.keys.initiator_key), look_for_keys=False,
                   allow_agent=False, timeout=10)
    try:
        _, stdout, stderr = client.exec_command("id", timeout=10)
        assert stdout.read() == b""
        assert b"only the distbuild subsystem is served" in stderr.read()
        assert stdout.channel.recv_exit_status() == 1
    finally:
        client.close()


class Blackhole:
    """A loopback TCP proxy that can stop passing bytes without closing (a cut cable)."""

    def __init__(self, target_port: int):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.target = target_port
        self.cut = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        conn, _ = self.server.accept()
        upstream = socket.create_connection(("127.0.0.1", self.target))
        self.sockets += [conn, upstream]
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a, b):
        while True:
            try:
                data = a.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not self.cut.is_set():
                b.sendall(data)

    def close(self):
        for s in [self.server, *self.sockets]:
            s.close()


def test_dead_worker_link_is_noticed_within_ten_seconds(controller):
    proxy = Blackhole(controller.worker_port)
    known = controller.keys.known_hosts
    # The proxy's port must be trusted like the controller's own worker port.
    host_key = ssh.public_key_of(controller.keys.controller_host_key)
    known.write_text(known.read_text() + ssh.known_hosts_line("127.0.0.1", proxy.port,
                                                              host_key) + "\n")
    worker = link.connect("127.0.0.1", proxy.port, controller.keys.worker_key, known,
                          "worker", "idle")
    worker.send(WorkerReady(arch="x86_64", slots=1))
    time.sleep(0.5)
    proxy.cut.set()
    cut_at = time.monotonic()
    while "worker idle disconnected: no heartbeat" not in controller.log():
        assert time.monotonic() - cut_at < 12, controller.log()
        time.sleep(0.1)
    assert time.monotonic() - cut_at <= 10
    # The worker side notices too, from its own silence.
    with pytest.raises(link.LinkError, match="no word from the controller"):
        while True:
            worker.receive(timeout=1)
    proxy.close()

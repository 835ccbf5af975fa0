"""Hostile input against real processes: deep JSON, bodies refused from their headers.

Nothing a peer sends may put a traceback in a service log, and a request the
trove will refuse must not get a byte of its body read, spooled or stored.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import pytest

from distbuild import link, tokens
from distbuild.protocol import messages as m
from tests.controller_process import ControllerProcess
from tests.trove_process import TroveProcess

KEY = "5a" * 32
DEEP = b"[" * 200_000 + b"]" * 200_000
HUGE = 314_572_800


@pytest.fixture(scope="module")
def trove(tmp_path_factory):
    t = TroveProcess(tmp_path_factory.mktemp("trove")).start()
    yield t
    t.stop()


def disk_use(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def spooled(pid: int) -> list[str]:
    """Files the process holds open that are deleted (Twisted's spool files) or temporary."""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith("(deleted)") or Path(target).parent == Path(tempfile.gettempdir()):
            out.append(target)
    return out


def send_headers(trove, head: bytes, then: bytes = b"", timeout: float = 5) -> bytes:
    """Send a request's head (and maybe some body), and read the answer with the body unsent."""
    sock = socket.create_connection(("127.0.0.1", trove.info["http_port"]), timeout=timeout)
    try:
        sock.sendall(head + then)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        assert time.monotonic() - started < timeout
        return answer
    finally:
        sock.close()


@pytest.mark.parametrize(("method", "path", "auth", "status"), [
    ("PUT", f"/2.0/sources/{KEY}", b"", b"401"),
    ("PUT", f"/2.0/sources/{KEY}", b"Authorization: Bearer forged.token\r\n", b"403"),
    ("POST", "/2.0/sources/query", b"", b"413"),
    ("PUT", "/2.0/pins/p1", b"", b"401"),
])
def test_a_refused_body_is_refused_from_its_headers_and_nothing_is_spooled(
        trove, method, path, auth, status):
    before = disk_use(trove.root)
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + auth
            + f"Content-Length: {HUGE}\r\n\r\n".encode())
    # A megabyte of the body is sent too: it must be neither read into a file nor stored.
    answer = send_headers(trove, head, b"x" * (1 << 20))
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert b"error: " in answer and b"Connection: close" in answer
    assert spooled(trove.proc.pid) == []
    assert not list((trove.artifact_dir / "tmp").iterdir())
    assert disk_use(trove.root) - before < 64 << 10  # its log line, nothing more
    assert "Traceback" not in trove.log()


def test_an_upload_with_a_good_token_still_streams(trove, tmp_path):
    from distbuild.trove.client import CacheClient

    artifact = tmp_path / "a"
    artifact.write_bytes(b"z" * 100_000)
    client = CacheClient(trove.cache_url)
    assert client.upload_source(KEY, {f"{KEY}.chunk.x": artifact},
                                tokens.issue(trove.secret, KEY, ttl=60)) is True


def test_the_client_reports_the_trove_s_refusal_not_a_reset(trove, tmp_path):
    from distbuild.trove.client import CacheClient, CacheClientError

    other = "6b" * 32
    artifact = tmp_path / "big"
    artifact.write_bytes(b"y" * (8 << 20))
    with pytest.raises(CacheClientError) as info:
        CacheClient(trove.cache_url).upload_source(other, {f"{other}.chunk.x": artifact},
                                                   "not-a-token")
    assert info.value.status == 403, info.value


def test_deep_json_to_the_trove_is_a_clear_400(trove):
    import http.client

    for path in ("/2.0/sources/query", "/1.0/artifacts"):
        conn = http.client.HTTPConnection("127.0.0.1", trove.info["http_port"], timeout=30)
        try:
            conn.request("POST", path, body=DEEP, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            text = resp.read().decode()
        finally:
            conn.close()
        assert resp.status == 400, text
        assert "nested deeper than 64 levels" in text
    assert "Traceback" not in trove.log()


def test_deep_json_on_a_controller_link_is_refused_without_a_traceback(tmp_path):
    controller = ControllerProcess(tmp_path / "controller").start()
    try:
        keys = controller.keys
        conn = link.connect("127.0.0.1", controller.initiator_port, keys.initiator_key,
                            keys.known_hosts, "initiator", "mallory")
        try:
            conn.channel.sendall(b'{"type": "status-request", "request_id": ' + DEEP + b"}\n")
            answer = conn.receive(timeout=10)
        except link.LinkError:
            answer = None
        finally:
            conn.close()
        assert isinstance(answer, m.Refused), answer
        assert "nested deeper than 64 levels" in answer.reason
        # The controller goes on serving.
        conn = link.connect("127.0.0.1", controller.initiator_port, keys.initiator_key,
                            keys.known_hosts, "initiator", "alice")
        conn.send(m.ListRequests())
        assert isinstance(conn.receive(timeout=10), m.RequestList)
        conn.close()
        assert "Traceback" not in controller.log()
        assert "nested deeper" in controller.log()
    finally:
        controller.stop()

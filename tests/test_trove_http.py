"""The artifact cache API against a real trove process on 127.0.0.1."""

import hashlib
import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from distbuild import tokens
from distbuild.trove.client import CacheClient, CacheClientError, Stored
from tests.tcp_proxy import DroppingProxy
from tests.trove_process import TroveProcess

KEY = "3f" * 32
OTHER = "e1" * 32


@pytest.fixture(scope="module")
def trove(tmp_path_factory):
    t = TroveProcess(tmp_path_factory.mktemp("trove")).start()
    yield t
    t.stop()


def make_files(tmp_path, key, **contents):
    out = {}
    for name, data in contents.items():
        path = tmp_path / name
        path.write_bytes(data)
        out[f"{key}.chunk.{name}"] = path
    return out


def raw(trove, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", trove.info["http_port"], timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace"), resp
    finally:
        conn.close()


def test_upload_then_read_back_through_both_apis(trove, tmp_path):
    client = CacheClient(trove.cache_url)
    files = make_files(tmp_path, KEY, **{"hello-bins": b"\x7fELF" * 1000, "hello-doc": b""})
    log = tmp_path / "log"
    log.write_text("12:00:00 make\n12:00:01 done\n")
    assert client.cached_sources([KEY, OTHER]) == {KEY: False, OTHER: False}
    token = tokens.issue(trove.secret, KEY, ttl=60)
    assert client.upload_source(KEY, files, token, log=log) is True

    assert client.cached_sources([KEY, OTHER]) == {KEY: True, OTHER: False}
    bins = f"{KEY}.chunk.hello-bins"
    assert client.has_artifacts([bins, f"{OTHER}.chunk.x"]) == {bins: True,
                                                                 f"{OTHER}.chunk.x": False}
    got = client.download(bins, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"\x7fELF" * 1000
    assert got.sha256 == hashlib.sha256(b"\x7fELF" * 1000).hexdigest()
    assert client.fetch_log(KEY) == log.read_bytes()
    meta = client.source_meta(KEY)
    assert {a["filename"]: a["size"] for a in meta["artifacts"]} == {
        bins: 4000, f"{KEY}.chunk.hello-doc": 0}
    # Many sources' records in one round trip, as a worker asks before staging.
    assert client.source_metas([KEY, OTHER]) == {KEY: meta, OTHER: None}

    # morph-cache-server compatibility, byte for byte as its clients sent it.
    status, body, resp = raw(trove, "HEAD", f"/1.0/artifacts?filename={bins}")
    assert (status, resp.getheader("content-length")) == (200, "4000")
    status, body, _ = raw(trove, "POST", "/1.0/artifacts", json.dumps([bins]),
                          {"Content-Type": "application/json"})
    assert (status, json.loads(body)) == (200, {bins: True})
    # A second upload of the same source is accepted and changes nothing; either
    # answer carries the trove's receipt for the source, for the controller.
    again = client.store_source(KEY, files, token, log=log)
    assert again.stored is False
    tokens.verify(trove.secret, tokens.stored_subject(KEY), again.receipt)
    with pytest.raises(tokens.TokenError):
        tokens.verify(trove.secret, KEY, again.receipt)  # not an upload token
    assert f"stored: {KEY} (4028 bytes from 127.0.0.1:" in trove.log()
    assert f"already cached: {KEY}" in trove.log()


def test_missing_artifact_and_log_are_404_with_a_clear_body(trove, tmp_path):
    client = CacheClient(trove.cache_url)
    with pytest.raises(CacheClientError, match="404: artifact not in cache") as e:
        client.download(f"{OTHER}.chunk.nope", tmp_path / "x")
    assert e.value.status == 404
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []
    assert client.fetch_log(OTHER) is None
    assert client.source_meta(OTHER) is None


def test_wrong_sha_on_download_leaves_no_file(trove, tmp_path):
    client = CacheClient(trove.cache_url)
    key = "77" * 32
    files = make_files(tmp_path, key, a=b"abc")
    client.upload_source(key, files, tokens.issue(trove.secret, key))
    out = tmp_path / "dl"
    out.mkdir()
    with pytest.raises(CacheClientError, match="sha256 mismatch"):
        client.download(f"{key}.chunk.a", out / "a", expected_sha256="0" * 64)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("case", ["missing", "forged", "expired", "other-key"])
def test_uploads_without_a_valid_token_are_refused(trove, tmp_path, case):
    key = "aa" * 32
    token = {
        "missing": None,
        "forged": tokens.issue(b"not the trove's secret!!", key),
        "expired": tokens.issue(trove.secret, key, ttl=-1),
        "other-key": tokens.issue(trove.secret, OTHER),
    }[case]
    body = json.dumps({"artifacts": [{"filename": f"{key}.chunk.a", "size": 1,
                                      "sha256": hashlib.sha256(b"x").hexdigest()}]}) + "\nx"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, text, _ = raw(trove, "PUT", f"/2.0/sources/{key}", body, headers)
    expected = {"missing": (401, "needs a token"), "forged": (403, "not issued for this key"),
                "expired": (403, "expired"), "other-key": (403, "not issued for this key")}
    assert status == expected[case][0]
    assert expected[case][1] in text and key in text
    assert CacheClient(trove.cache_url).cached_sources([key]) == {key: False}
    assert f"refused PUT /2.0/sources/{key} from 127.0.0.1:" in trove.log()


@pytest.mark.parametrize("path", [
    "/1.0/artifacts?filename=../../etc/passwd",
    "/1.0/artifacts?filename=" + KEY + ".chunk.%2F..%2F..%2Fetc",
    "/1.0/artifacts?filename=" + KEY + ".chunk/../../x",
    "/1.0/artifacts?filename=" + KEY + "." + "a" * 300,
    "/1.0/artifacts?filename=" + KEY,
    "/2.0/sources/..%2F..%2Fetc/log",
    "/2.0/sources/" + KEY.upper(),
])
def test_traversal_and_malformed_names_get_400(trove, path):
    status, text, _ = raw(trove, "GET", path)
    assert status == 400, text
    assert text.startswith("error: ")


def test_bad_name_in_a_bulk_query_is_400(trove):
    status, text, _ = raw(trove, "POST", "/1.0/artifacts", json.dumps(["../x"]))
    assert status == 400 and "not a valid artifact filename" in text
    for query in ("query", "metas"):
        status, text, _ = raw(trove, "POST", f"/2.0/sources/{query}",
                              json.dumps({"keys": ["/etc"]}))
        assert status == 400 and "not a cache key" in text
        status, text, _ = raw(trove, "POST", f"/2.0/sources/{query}", json.dumps(["x"]))
        assert status == 400 and 'body must be {"keys"' in text


def test_a_truncated_upload_leaves_nothing(trove):
    key = "bb" * 32
    data = os.urandom(3 << 20)
    head = json.dumps({"artifacts": [{"filename": f"{key}.chunk.big", "size": len(data),
                                      "sha256": hashlib.sha256(data).hexdigest()}]}) + "\n"
    token = tokens.issue(trove.secret, key)
    with socket.create_connection(("127.0.0.1", trove.info["http_port"])) as s:
        s.sendall(f"PUT /2.0/sources/{key} HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {token}\r\n"
                  f"Content-Length: {len(head) + len(data)}\r\n\r\n".encode())
        s.sendall(head.encode() + data[: len(data) // 2])
        # The body streams into the store's private upload directory as it arrives
        # (not into a spool file first).
        tmp = trove.artifact_dir / "tmp"
        deadline = time.monotonic() + 5
        while not list(tmp.glob("upload-*/*.big")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list(tmp.glob("upload-*/*.big"))
    deadline = time.monotonic() + 5
    while list(tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp.iterdir()) == []
    assert CacheClient(trove.cache_url).cached_sources([key]) == {key: False}
    assert not list(trove.artifact_dir.rglob(f"{key}*"))


def test_concurrent_uploads_of_one_source(trove, tmp_path):
    key = "cc" * 32
    data = {f"part{i}": os.urandom(1 << 20) for i in range(3)}
    files = make_files(tmp_path, key, **data)
    token = tokens.issue(trove.secret, key)
    results, errors = [], []

    def upload():
        try:
            results.append(CacheClient(trove.cache_url).upload_source(key, files, token))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=upload) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [False] * 5 + [True]
    client = CacheClient(trove.cache_url)
    for name, content in data.items():
        got = client.download(f"{key}.chunk.{name}", tmp_path / f"dl-{name}")
        assert got.path.read_bytes() == content
    assert list((trove.artifact_dir / "tmp").iterdir()) == []


def test_unknown_endpoint_is_404(trove):
    status, text, _ = raw(trove, "GET", "/3.0/whatever")
    assert status == 404 and "no such endpoint" in text


@pytest.mark.slow
def test_200_mb_round_trip_keeps_the_trove_small(trove, tmp_path):
    key = "dd" * 32
    src = tmp_path / "big"
    h = hashlib.sha256()
    with open(src, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(200):
            piece = block[:-4] + i.to_bytes(4, "big")
            h.update(piece)
            f.write(piece)
    before = trove.rss_peak_kib()
    client = CacheClient(trove.cache_url)
    assert client.upload_source(key, {f"{key}.system.big-rootfs": src},
                                tokens.issue(trove.secret, key), sha256s={
                                    f"{key}.system.big-rootfs": h.hexdigest()})
    got = client.download(f"{key}.system.big-rootfs", tmp_path / "back")
    assert got.sha256 == h.hexdigest() and got.size == 200 << 20
    grown_mib = (trove.rss_peak_kib() - before) / 1024
    print(f"trove peak RSS grew by {grown_mib:.1f} MiB during a 200 MiB round trip")
    assert grown_mib < 40


def test_upload_by_a_path_the_streaming_hook_does_not_see_still_works(trove, tmp_path):
    # A query string keeps TroveRequest from streaming; the spooled body is replayed.
    key = "f0" * 32
    data = b"spooled" * 1000
    head = json.dumps({"artifacts": [{"filename": f"{key}.chunk.s", "size": len(data),
                                      "sha256": hashlib.sha256(data).hexdigest()}]})
    body = head.encode() + b"\n" + data
    status, text, _ = raw(trove, "PUT", f"/2.0/sources/{key}?from=test", body)
    assert status == 401
    status, text, _ = raw(trove, "PUT", f"/2.0/sources/{key}?from=test", body,
                          {"Authorization": f"Bearer {tokens.issue(trove.secret, key)}"})
    assert status == 201 and json.loads(text)["stored"] is True
    got = CacheClient(trove.cache_url).download(f"{key}.chunk.s", tmp_path / "s")
    assert got.path.read_bytes() == data


def upload_head(key, data, declared=None):
    return (json.dumps({"artifacts": [{
        "filename": f"{key}.system.big-rootfs", "size": len(data),
        "sha256": declared or hashlib.sha256(data).hexdigest()}]}) + "\n").encode()


def test_a_large_upload_with_a_wrong_sha256_is_refused_and_leaves_nothing(trove):
    key = "ab" * 32
    data = os.urandom(4 << 20)
    status, text, _ = raw(trove, "PUT", f"/2.0/sources/{key}",
                          upload_head(key, data, "0" * 64) + data,
                          {"Authorization": f"Bearer {tokens.issue(trove.secret, key)}"})
    assert status == 400
    assert f"sha256 mismatch for {key}.system.big-rootfs: declared {'0' * 64}" in text
    assert CacheClient(trove.cache_url).cached_sources([key]) == {key: False}
    assert list((trove.artifact_dir / "tmp").iterdir()) == []


def test_a_large_upload_in_bursts_keeps_its_connection_for_the_next_request(trove):
    key = "ac" * 32
    data = os.urandom(5 << 20)
    body = upload_head(key, data) + data

    def bursts():
        for i in range(0, len(body), 1 << 20):
            yield body[i:i + (1 << 20)]
            time.sleep(0.1)

    conn = http.client.HTTPConnection("127.0.0.1", trove.info["http_port"], timeout=30)
    try:
        conn.request("PUT", f"/2.0/sources/{key}", body=bursts(), headers={
            "Authorization": f"Bearer {tokens.issue(trove.secret, key)}",
            "Content-Length": str(len(body))})
        resp = conn.getresponse()
        assert resp.status == 201, resp.read()
        resp.read()
        first = conn.sock
        conn.request("GET", f"/2.0/sources/{key}")
        resp = conn.getresponse()
        meta = json.loads(resp.read())
        assert conn.sock is first  # the same connection answered both
    finally:
        conn.close()
    assert meta["artifacts"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    stored = trove.artifact_dir / "sources" / key[:2] / key / f"{key}.system.big-rootfs"
    assert stored.read_bytes() == data


def test_a_stalled_upload_is_dropped_after_the_idle_timeout(tmp_path):
    conf = tmp_path / "conf.yaml"
    conf.write_text("trove:\n  idle_timeout: 1\n")
    t = TroveProcess(tmp_path / "trove", config=conf).start()
    try:
        key = "ad" * 32
        data = os.urandom(4 << 20)
        head = upload_head(key, data)
        with socket.create_connection(("127.0.0.1", t.info["http_port"])) as s:
            s.sendall(f"PUT /2.0/sources/{key} HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {tokens.issue(t.secret, key)}\r\n"
                      f"Content-Length: {len(head) + len(data)}\r\n\r\n".encode())
            s.sendall(head + data[: 2 << 20])
            s.settimeout(10)
            start = time.monotonic()
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
            waited = time.monotonic() - start
        assert waited < 5
        tmp = t.artifact_dir / "tmp"
        deadline = time.monotonic() + 5
        while list(tmp.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(tmp.iterdir()) == []
        assert f"dropped upload of {key}" in t.log()
        assert "no progress for 1 s" in t.log()
    finally:
        t.stop()


def upload_random(trove, tmp_path, key, mib):
    data = os.urandom(mib << 20)
    path = tmp_path / f"{key[:4]}-rootfs"
    path.write_bytes(data)
    filename = f"{key}.system.big-rootfs"
    CacheClient(trove.cache_url).upload_source(key, {filename: path},
                                               tokens.issue(trove.secret, key))
    return filename, data


def trove_threads(trove) -> int:
    return len(list(Path(f"/proc/{trove.proc.pid}/task").iterdir()))


def settled_threads(trove) -> int:
    """The trove's thread count once threads of earlier requests have ended (an upload's
    thread answers, then exits: the client can hear the answer first)."""
    count, deadline = trove_threads(trove), time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = trove_threads(trove)
        if now == count:
            break
        count = now
    return count


def test_a_large_download_keeps_its_connection_for_the_next_request(trove, tmp_path):
    filename, data = upload_random(trove, tmp_path, "ae" * 32, 6)
    conn = http.client.HTTPConnection("127.0.0.1", trove.info["http_port"], timeout=30)
    try:
        conn.request("GET", f"/1.0/artifacts?filename={filename}")
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.getheader("content-length")) == len(data)
        assert resp.read() == data
        first = conn.sock
        conn.request("GET", "/2.0/status")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["sources"] >= 1
        assert conn.sock is first
    finally:
        conn.close()


def test_a_client_leaving_mid_download_costs_the_trove_nothing(trove, tmp_path):
    filename, _ = upload_random(trove, tmp_path, "af" * 32, 32)
    before = settled_threads(trove)
    with socket.create_connection(("127.0.0.1", trove.info["http_port"])) as s:
        s.sendall(f"GET /1.0/artifacts?filename={filename} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(65536)
        deadline = time.monotonic() + 5
        while trove_threads(trove) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert trove_threads(trove) == before + 1  # the sending thread
    deadline = time.monotonic() + 5
    while trove_threads(trove) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trove_threads(trove) == before
    status, _, _ = raw(trove, "GET", "/2.0/status")
    assert status == 200


def test_a_client_that_stops_reading_is_dropped_after_the_idle_timeout(tmp_path):
    conf = tmp_path / "conf.yaml"
    conf.write_text("trove:\n  idle_timeout: 1\n")
    t = TroveProcess(tmp_path / "trove", config=conf).start()
    try:
        filename, data = upload_random(t, tmp_path, "a0" * 32, 64)
        with socket.create_connection(("127.0.0.1", t.info["http_port"])) as s:
            s.sendall(f"GET /1.0/artifacts?filename={filename} HTTP/1.1\r\n"
                      f"Host: x\r\n\r\n".encode())
            deadline = time.monotonic() + 10
            while "dropped download" not in t.log() and time.monotonic() < deadline:
                time.sleep(0.1)
            got = 0
            s.settimeout(10)
            try:
                while chunk := s.recv(1 << 20):
                    got += len(chunk)
            except ConnectionResetError:
                pass
        assert f"dropped download of {filename}" in t.log()
        assert "no progress for 1 s" in t.log()
        assert got < len(data)
    finally:
        t.stop()


def test_queries_share_one_connection_and_survive_its_loss(trove):
    proxy = DroppingProxy(trove.info["http_port"])
    try:
        # No retries: only the immediate new connection can answer after a cut.
        client = CacheClient(f"http://127.0.0.1:{proxy.port}/", retry_delays=())
        key, other = "5a" * 32, "a5" * 32  # never uploaded by the module's other tests
        assert client.cached_sources([key]) == {key: False}
        assert client.source_meta(other) is None  # a 404 leaves the connection usable
        assert client.has_artifacts([f"{key}.chunk.x-bins"]) == {f"{key}.chunk.x-bins": False}
        assert proxy.drop() == 1
        # The trove (here: the proxy) closed the kept connection meanwhile.
        assert client.cached_sources([key, other]) == {key: False, other: False}
        assert proxy.drop() == 1
    finally:
        proxy.close()


def test_jobs_on_threads_of_their_own_share_one_connection_uploads_included(trove,
                                                                            tmp_path):
    """A worker makes a client on a new thread per job; its queries and its upload
    go over one kept connection, and an upload after the trove dropped it still lands."""
    proxy = DroppingProxy(trove.info["http_port"])
    url = f"http://127.0.0.1:{proxy.port}/"

    def job(key: str, query: bool, stored: list) -> None:
        client = CacheClient(url, retry_delays=())  # only an immediate new connection
        if query:
            assert client.cached_sources([key]) == {key: False}
        stored.append(client.store_source(key, make_files(tmp_path / key, key, x=key.encode()),
                                          tokens.issue(trove.secret, key)))

    def run(key: str, query: bool = True) -> Stored:
        (tmp_path / key).mkdir()
        stored: list = []
        thread = threading.Thread(target=job, args=(key, query, stored))
        thread.start()
        thread.join()
        assert stored, "the job failed"
        return stored[0]

    try:
        keys = ["6a" * 32, "6b" * 32, "6c" * 32]
        assert all(run(key).stored for key in keys[:2])
        assert proxy.drop() == 1  # two jobs, each a query and an upload: one connection
        # An upload first, on the kept connection the trove dropped.
        assert run(keys[2], query=False).stored
        assert proxy.drop() == 1
        assert CacheClient(trove.cache_url).cached_sources(keys) == dict.fromkeys(keys, True)
    finally:
        proxy.close()


def test_a_rotated_token_secret_takes_effect_at_the_next_upload(trove, tmp_path):
    client = CacheClient(trove.cache_url)
    old = trove.secret
    first, second = "7a" * 32, "7b" * 32
    client.upload_source(first, make_files(tmp_path, first, x=b"1"), tokens.issue(old, first))
    trove.secret_file.write_text(tokens.new_secret() + "\n")
    try:
        with pytest.raises(CacheClientError, match="403"):
            client.upload_source(second, make_files(tmp_path, second, x=b"2"),
                                 tokens.issue(old, second))
        stored = client.store_source(second, make_files(tmp_path, second, x=b"2"),
                                     tokens.issue(trove.secret, second))
        tokens.verify(trove.secret, tokens.stored_subject(second), stored.receipt)
    finally:
        trove.secret_file.write_text(old.decode() + "\n")

"""Bodies spliced from a socket into an upload's files (no Twisted: a socketpair)."""

import hashlib
import json
import os
import socket
import threading
import time

import pytest

from distbuild.trove.splice import SocketEnded, SocketSource
from distbuild.trove.store import Store, UploadError
from tests.conftest import small_tmpfs

KEY = "5a" * 32


def pair():
    a, b = socket.socketpair()
    b.setblocking(False)  # as the event loop leaves it
    return a, b


def manifest(files, lie=None):
    return (json.dumps({"artifacts": [
        {"filename": f"{KEY}.chunk.{name}", "size": len(data),
         "sha256": lie[1] if lie and name == lie[0] else hashlib.sha256(data).hexdigest()}
        for name, data in files.items()]}) + "\n").encode()


def send_later(sock, *pieces, pause=0.0, close=True):
    def run():
        try:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(pause)
        except OSError:
            pass  # the receiver gave up early, as some tests mean it to
        if close:
            sock.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_recv_and_splice_move_exact_counts_and_count_what_they_took(tmp_path):
    sender, receiver = pair()
    data = os.urandom(3 << 20)
    send_later(sender, b"head", data, pause=0.05)
    source = SocketSource(receiver.fileno(), idle_timeout=5)
    try:
        assert source.recv(4) == b"head"
        with open(tmp_path / "out", "wb") as out:
            moved = 0
            while moved < len(data):
                moved += source.splice_to(out.fileno(), len(data) - moved)
        assert moved == len(data)
        assert (tmp_path / "out").read_bytes() == data
        assert source.consumed == 4 + len(data)
        with pytest.raises(SocketEnded, match="closed the connection"):
            source.recv(1)
    finally:
        source.close()
        receiver.close()


def test_stop_and_idle_timeout_end_a_waiting_read():
    sender, receiver = pair()
    source = SocketSource(receiver.fileno(), idle_timeout=None)
    threading.Timer(0.3, source.stop).start()
    start = time.monotonic()
    with pytest.raises(SocketEnded, match="stopped"):
        source.recv(10)
    assert time.monotonic() - start < 2
    source.close()

    idle = SocketSource(receiver.fileno(), idle_timeout=0.5)
    with pytest.raises(SocketEnded) as caught:
        idle.recv(10)
    assert caught.value.timed_out
    idle.close()
    sender.close()
    receiver.close()


def test_the_source_survives_the_event_loop_closing_its_socket(tmp_path):
    sender, receiver = pair()
    source = SocketSource(receiver.fileno())
    receiver.close()  # the duplicate keeps the connection usable
    send_later(sender, b"x" * 1000)
    assert source.recv(1000)
    source.close()


def spliced_upload(tmp_path, files, lie=None, extra=b"", pause=0.0):
    store = Store(tmp_path / "store", fsync=False)
    upload = store.begin(KEY)
    sender, receiver = pair()
    head = manifest(files, lie)
    body = head + b"".join(files.values()) + extra
    # The event loop delivered the first bytes; the rest comes over the socket.
    upload.write(body[:10])
    send_later(sender, *[body[i:i + (1 << 20)] for i in range(10, len(body), 1 << 20)],
               pause=pause)
    source = SocketSource(receiver.fileno(), idle_timeout=5)
    try:
        upload.take_from(source, len(body) - 10)
    finally:
        source.close()
        receiver.close()
    return store, upload, source, len(body) - 10


def test_a_spliced_upload_of_several_files_is_stored_and_verified(tmp_path):
    # Small files (held in memory, not spliced) before, between and after large ones.
    files = {"s": b"small" * 9, "a": os.urandom(5 << 20), "empty": b"", "s2": b"small" * 9,
             "b": os.urandom(1234567), "c": b"x"}
    store, upload, source, count = spliced_upload(tmp_path, files, pause=0.01)
    assert source.consumed == count
    assert upload.finish() is True
    meta = store.meta(KEY)
    for item, (name, data) in zip(meta["artifacts"], files.items(), strict=True):
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
        assert store.artifact_path(f"{KEY}.chunk.{name}").read_bytes() == data


def test_a_wrong_sha256_in_a_spliced_file_is_refused_at_seal(tmp_path):
    files = {"a": os.urandom(3 << 20), "b": os.urandom(2 << 20)}
    store, upload, _, _ = spliced_upload(tmp_path, files, lie=("b", "0" * 64))
    with pytest.raises(UploadError, match=f"sha256 mismatch for {KEY}.chunk.b"):
        upload.finish()
    assert not store.has_source(KEY)
    assert list(store.tmp.iterdir()) == []


def test_bytes_past_the_declared_files_fail_the_upload(tmp_path):
    files = {"a": os.urandom(2 << 20)}
    store, upload, _, _ = spliced_upload(tmp_path, files, extra=b"surplus")
    assert upload.error is not None and "more bytes than the manifest" in str(upload.error)
    with pytest.raises(UploadError):
        upload.finish()
    assert list(store.tmp.iterdir()) == []


def test_a_full_disk_fails_the_upload_before_its_bytes_arrive(tmp_path):
    with small_tmpfs(tmp_path / "small", "4m") as small:
        store = Store(small / "store", fsync=False)
        upload = store.begin(KEY)
        size = 16 << 20
        head = (json.dumps({"artifacts": [{"filename": f"{KEY}.chunk.big", "size": size,
                                           "sha256": "0" * 64}]}) + "\n").encode()
        upload.write(head)
        # The space is reserved when the file is opened: nothing was sent yet.
        assert upload.error is not None and upload.error.status == 507
        assert "No space left on device" in str(upload.error)
        with pytest.raises(UploadError):
            upload.finish()
        assert list(store.tmp.iterdir()) == []

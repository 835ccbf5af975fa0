import hashlib
import json
import os

import pytest

from distbuild.trove.store import Store, UploadError

KEY = "ab" * 32
OTHER = "cd" * 32


def body(key, files, log=None, lie=None):
    """Manifest line and concatenated contents, as a client sends them."""
    entries = [{"filename": f"{key}.chunk.{n}", "size": len(d),
                "sha256": hashlib.sha256(d).hexdigest()} for n, d in files]
    if lie is not None:
        entries[0]["sha256"] = lie
    manifest = {"artifacts": entries, "log": None}
    if log is not None:
        manifest["log"] = {"size": len(log), "sha256": hashlib.sha256(log).hexdigest()}
    data = json.dumps(manifest).encode() + b"\n" + b"".join(d for _, d in files) + (log or b"")
    return data


def upload(store, key, data, piece=7):
    up = store.begin(key)
    for i in range(0, len(data), piece):
        up.write(data[i:i + piece])
    return up.finish()


def test_upload_in_small_pieces_stores_files_with_sha256(tmp_path):
    store = Store(tmp_path)
    assert upload(store, KEY, body(KEY, [("a-bins", b"A" * 100), ("a-devel", b"")], b"log\n"))
    assert store.has_source(KEY)
    assert store.artifact_path(f"{KEY}.chunk.a-bins").read_bytes() == b"A" * 100
    assert store.artifact_path(f"{KEY}.chunk.a-devel").read_bytes() == b""
    assert store.log_path(KEY).read_bytes() == b"log\n"
    assert store.entry(f"{KEY}.chunk.a-bins").sha256 == hashlib.sha256(b"A" * 100).hexdigest()
    assert store.total_size() == 104
    assert list((tmp_path / "tmp").iterdir()) == []


def test_sha_mismatch_and_truncation_leave_nothing(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(UploadError, match="sha256 mismatch"):
        upload(store, KEY, body(KEY, [("x", b"data")], lie="0" * 64))
    data = body(KEY, [("x", b"data" * 100)])
    with pytest.raises(UploadError, match="truncated"):
        upload(store, KEY, data[:-10])
    with pytest.raises(UploadError, match="more bytes"):
        upload(store, KEY, data + b"!")
    assert not store.has_source(KEY)
    assert store.artifact_path(f"{KEY}.chunk.x") is None
    assert list((tmp_path / "tmp").iterdir()) == []
    assert list((tmp_path / "sources").rglob("*.chunk.*")) == []


def test_artifact_of_another_key_and_bad_names_are_refused(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(UploadError, match="does not belong"):
        upload(store, KEY, body(OTHER, [("x", b"1")]))
    bad = json.dumps({"artifacts": [{"filename": f"{KEY}.chunk/../../etc", "size": 1,
                                     "sha256": "0" * 64}]}).encode() + b"\n1"
    with pytest.raises(UploadError, match="not a valid artifact filename"):
        upload(store, KEY, bad)
    with pytest.raises(UploadError, match="not valid JSON"):
        upload(store, KEY, b"{nope\n")


def test_two_uploads_of_one_key_first_wins_whole(tmp_path):
    store = Store(tmp_path)
    first, second = store.begin(KEY), store.begin(KEY)
    a = body(KEY, [("x", b"first" * 10)])
    b = body(KEY, [("x", b"second" * 10)])
    for i in range(0, max(len(a), len(b)), 5):
        first.write(a[i:i + 5])
        second.write(b[i:i + 5])
    assert second.finish() is True
    assert first.finish() is False
    assert store.artifact_path(f"{KEY}.chunk.x").read_bytes() == b"second" * 10
    assert list((tmp_path / "tmp").iterdir()) == []


def test_abort_removes_partial_files(tmp_path):
    store = Store(tmp_path)
    up = store.begin(KEY)
    up.write(body(KEY, [("x", b"z" * 1000)])[:500])
    up.abort()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not store.has_source(KEY)


def test_collect_removes_least_recently_used_but_not_pinned(tmp_path):
    store = Store(tmp_path)
    keys = [f"{i:02x}" * 32 for i in range(4)]
    for i, key in enumerate(keys):
        upload(store, key, body(key, [("x", b"x" * 100)]), piece=1000)
        os.utime(store.source_dir(key), (1000 + i, 1000 + i))
    store.touch(keys[0])  # now the most recently used
    store.pins.set("build-1", [keys[1]], ttl=60)
    removed = store.collect(limit=200)
    assert removed == [keys[2], keys[3]]
    assert sorted(store.keys()) == sorted([keys[0], keys[1]])
    assert not store.source_dir(keys[2]).exists()
    # A restarted store finds what is left and its sizes.
    assert Store(tmp_path).total_size() == 200


def test_expired_pins_no_longer_protect(tmp_path):
    store = Store(tmp_path)
    upload(store, KEY, body(KEY, [("x", b"x" * 100)]), piece=1000)
    store.pins.set("old", [KEY], ttl=10, now=0)
    assert store.collect(limit=0) == [KEY]


EMPTY_TARBALL = b"\x1f\x8b" + b"\x00" * 43  # any small bytes several artifacts share
SPLITS = ("bins", "devel", "doc", "libs")


def test_identical_small_artifacts_are_stored_once_and_read_back_whole(tmp_path):
    store = Store(tmp_path)
    upload(store, KEY, body(KEY, [*((s, EMPTY_TARBALL) for s in SPLITS), ("misc", b"own")],
                            b"log\n"), piece=1000)
    upload(store, OTHER, body(OTHER, [("bins", EMPTY_TARBALL), ("misc", b"other")]),
           piece=1000)
    paths = [store.artifact_path(f"{KEY}.chunk.{s}") for s in SPLITS]
    paths.append(store.artifact_path(f"{OTHER}.chunk.bins"))
    assert {p.read_bytes() for p in paths} == {EMPTY_TARBALL}
    # One inode on disk: written and fsynced once, linked since (the second upload too).
    assert len({p.stat().st_ino for p in paths}) == 1
    assert store.artifact_path(f"{KEY}.chunk.misc").stat().st_nlink == 1
    assert sorted(os.listdir(store.source_dir(KEY))) == sorted(
        [f"{KEY}.chunk.{s}" for s in (*SPLITS, "misc")] + ["build.log", "meta.json"])
    assert store.entry(f"{KEY}.chunk.doc").size == len(EMPTY_TARBALL)


def test_collect_drops_a_shared_copy_once_no_source_links_it(tmp_path):
    store = Store(tmp_path)
    upload(store, KEY, body(KEY, [(s, EMPTY_TARBALL) for s in SPLITS]), piece=1000)
    shared = list((tmp_path / "shared").iterdir())
    assert len(shared) == 1
    store.pins.set("keep", [OTHER], ttl=60)
    upload(store, OTHER, body(OTHER, [("bins", EMPTY_TARBALL)]), piece=1000)
    assert store.collect(limit=len(EMPTY_TARBALL)) == [KEY]
    assert shared[0].exists()  # OTHER still links it
    store.pins.remove("keep")
    assert store.collect(limit=0) == [OTHER]
    assert list((tmp_path / "shared").iterdir()) == []


def test_a_small_file_whose_bytes_differ_from_its_sha256_is_refused_not_linked(tmp_path):
    store = Store(tmp_path)
    upload(store, KEY, body(KEY, [(s, EMPTY_TARBALL) for s in SPLITS]), piece=1000)
    lying = body(OTHER, [("bins", b"not the empty tarball")],
                 lie=hashlib.sha256(EMPTY_TARBALL).hexdigest())
    with pytest.raises(UploadError, match=f"sha256 mismatch for {OTHER}.chunk.bins"):
        upload(store, OTHER, lying)
    assert not store.has_source(OTHER)
    assert list((tmp_path / "tmp").iterdir()) == []

"""Artifact formats: splitting by rules, packing, unpacking, stratum documents."""

from __future__ import annotations

import os
import stat
import tarfile

import pytest

from distbuild.worker import artifacts
from distbuild.worker.errors import CorruptArtifact, StepError
from tests.worker_graph import split_rules


def install_tree(root):
    files = {
        "usr/bin/hello": "#!/bin/sh\n",
        "usr/lib/libgreet.so.1": "ELF",
        "usr/include/greet.h": "/* h */",
        "usr/lib/pkgconfig/greet.pc": "pc",
        "usr/share/doc/hello/README": "doc",
        "etc/motd": "hi",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "usr/bin/hello").chmod(0o4755)
    os.symlink("libgreet.so.1", root / "usr/lib/libgreet.so")
    (root / "var/empty").mkdir(parents=True)


def test_split_by_default_rules_first_match_wins(tmp_path):
    install_tree(tmp_path)
    split = artifacts.split_tree(tmp_path, split_rules("chunk", "x"))
    assert split == {
        "x-bins": ["usr/bin/hello"],
        "x-libs": ["usr/lib/libgreet.so", "usr/lib/libgreet.so.1"],
        "x-devel": ["usr/include/greet.h", "usr/lib/pkgconfig/greet.pc"],
        "x-doc": ["usr/share/doc/hello/README"],
        "x-locale": [],
        "x-misc": ["etc/motd", "var/empty"],
    }


def test_file_matching_no_rule_is_an_error(tmp_path):
    install_tree(tmp_path)
    rules = [r for r in split_rules("chunk", "x") if r.artifact != "x-misc"]
    with pytest.raises(StepError, match="installed file 'etc/motd' matches no split rule"):
        artifacts.split_tree(tmp_path, rules)


def test_pack_and_extract_keep_modes_symlinks_and_empty_dirs(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    install_tree(src)
    paths = ["usr/bin/hello", "usr/lib/libgreet.so", "usr/lib/libgreet.so.1", "var/empty"]
    packed = artifacts.pack(src, paths, tmp_path / "a.tgz", "K.chunk.x-misc")
    assert packed.size == (tmp_path / "a.tgz").stat().st_size
    with tarfile.open(tmp_path / "a.tgz") as tar:
        names = tar.getnames()
        assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m in tar.getmembers())
    assert names == sorted(names) and "usr" in names and not any(n.startswith(("/", "./"))
                                                                  for n in names)
    dest.mkdir()
    artifacts.extract(tmp_path / "a.tgz", dest, "K.chunk.x-misc")
    assert stat.S_IMODE((dest / "usr/bin/hello").stat().st_mode) == 0o4755
    assert os.readlink(dest / "usr/lib/libgreet.so") == "libgreet.so.1"
    assert (dest / "var/empty").is_dir()
    assert not (dest / "etc").exists()


def test_packing_is_deterministic(tmp_path):
    install_tree(tmp_path / "t")
    paths = artifacts.split_tree(tmp_path / "t", split_rules("chunk", "x"))["x-libs"]
    a = artifacts.pack(tmp_path / "t", paths, tmp_path / "a", "a")
    b = artifacts.pack(tmp_path / "t", paths, tmp_path / "b", "b")
    assert a.sha256 == b.sha256


def test_empty_artifact_is_an_empty_tarball(tmp_path):
    artifacts.pack(tmp_path, [], tmp_path / "e.tgz", "e")
    with tarfile.open(tmp_path / "e.tgz") as tar:
        assert tar.getnames() == []


def test_extract_refuses_members_leaving_the_destination(tmp_path):
    evil = tmp_path / "evil.tgz"
    (tmp_path / "payload").write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(tmp_path / "payload", arcname="../escaped")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(CorruptArtifact, match=r"K\.chunk\.evil: cannot unpack"):
        artifacts.extract(evil, dest, "K.chunk.evil")
    assert not (tmp_path / "escaped").exists()


def test_extract_refuses_writing_through_a_symlink_out_of_the_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(str(outside), dest / "lib")
    (tmp_path / "payload").write_text("x")
    bad = tmp_path / "bad.tgz"
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(tmp_path / "payload", arcname="lib/x.so")
    with pytest.raises(CorruptArtifact):
        artifacts.extract(bad, dest, "K.chunk.bad")
    assert list(outside.iterdir()) == []


def test_truncated_artifact_is_corrupt(tmp_path):
    install_tree(tmp_path / "t")
    packed = artifacts.pack(tmp_path / "t", ["etc/motd"], tmp_path / "a", "K.chunk.a")
    data = packed.path.read_bytes()
    packed.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptArtifact):
        artifacts.extract(packed.path, tmp_path / "d", "K.chunk.a")


def test_stratum_document_round_trip(tmp_path):
    chunk = artifacts.PackedArtifact("K.chunk.x-bins", tmp_path, "ab" * 32, 10)
    doc = artifacts.stratum_document("s", "s-runtime", "S", [chunk])
    artifacts.write_json(tmp_path / "S.stratum.s-runtime", doc)
    back = artifacts.read_stratum(tmp_path / "S.stratum.s-runtime", "S.stratum.s-runtime")
    assert back["chunks"] == [{"filename": "K.chunk.x-bins", "sha256": "ab" * 32, "size": 10}]
    (tmp_path / "bad").write_text("[]")
    with pytest.raises(CorruptArtifact, match="bad: not a distbuild-stratum/1 document"):
        artifacts.read_stratum(tmp_path / "bad", "bad")

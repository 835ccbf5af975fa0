"""What a reproducibility check compares inside two artifacts: members by path."""

from distbuild.worker.artifacts import pack
from distbuild.worker.verify import differences, manifest


def build(tmp_path, name, stamp):
    root = tmp_path / name
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("same\n")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "usr/stamp").write_text(stamp)
    (root / "usr/link").symlink_to("bin/tool")
    paths = ["usr", "usr/bin", "usr/bin/tool", "usr/stamp", "usr/link"]
    return pack(root, paths, tmp_path / f"{name}.tar.gz", "k.chunk.x-bins")


def test_identical_trees_pack_to_the_same_sha256_and_no_differences(tmp_path):
    a, b = build(tmp_path, "a", "1\n"), build(tmp_path, "b", "1\n")
    assert a.sha256 == b.sha256
    assert differences(manifest(a.path, "a"), manifest(b.path, "b")) == []


def test_a_changed_file_is_the_only_difference_with_both_sides(tmp_path):
    a, b = build(tmp_path, "a", "1\n"), build(tmp_path, "b", "22\n")
    left, right = manifest(a.path, "a"), manifest(b.path, "b")
    assert left["usr/bin/tool"]["mode"] == "0755" and left["usr/link"]["target"] == "bin/tool"
    (diff,) = differences(left, right)
    assert diff["path"] == "usr/stamp"
    assert (diff["stored"]["size"], diff["rebuilt"]["size"]) == (2, 3)
    assert diff["stored"]["sha256"] != diff["rebuilt"]["sha256"]


def test_a_file_only_one_side_has_is_listed_as_absent_on_the_other(tmp_path):
    a = build(tmp_path, "a", "1\n")
    right = dict(manifest(a.path, "a"))
    extra = right.pop("usr/stamp")
    assert differences(right, manifest(a.path, "a")) == [
        {"path": "usr/stamp", "stored": None, "rebuilt": extra}]

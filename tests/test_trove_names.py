import pytest

from distbuild.errors import TroveError
from distbuild.trove import names

KEY = "0123456789abcdef" * 4


@pytest.mark.parametrize("name, expected", [
    ("delta/binutils", "delta/binutils"), ("/baserock/morph.git", "baserock/morph"),
    ("a_b+c-d.e", "a_b+c-d.e"),
])
def test_repository_names(name, expected):
    assert names.check_repo_name(name) == expected


@pytest.mark.parametrize("name", [
    "", "/", "../etc", "a/../b", "a/./b", "a//b", ".hidden", "a/b.git/c", "a b", "a;b",
    "x" * 300, "~root", "a\\b",
])
def test_bad_repository_names(name):
    with pytest.raises(TroveError, match="invalid repository name"):
        names.check_repo_name(name)


@pytest.mark.parametrize("filename", [
    f"{KEY}.chunk.hello-bins", f"{KEY}.stratum.core-runtime", f"{KEY}.build-log",
    f"{KEY}.system.example-system-x86_64-rootfs",
])
def test_artifact_filenames(filename):
    assert names.check_filename(filename) == filename
    assert names.key_of(filename) == KEY


@pytest.mark.parametrize("filename", [
    "", KEY, f"{KEY}.", f"{KEY}..x", f"{KEY}.chunk/x", f"{KEY}.chunk.a..b",
    f"{KEY.upper()}.chunk.x", f"{KEY[:-1]}.chunk.x", f"{KEY}.{'a' * 201}", f"{KEY}.chunk.x\n",
    f"../{KEY}.chunk.x", f"{KEY}.chunk.x\x00",
])
def test_bad_artifact_filenames(filename):
    with pytest.raises(TroveError, match="not a valid artifact filename"):
        names.check_filename(filename)

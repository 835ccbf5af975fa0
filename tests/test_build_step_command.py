"""`distbuild build-step` as a user runs it: its own process, real git and bubblewrap."""

from __future__ import annotations

import pytest

from distbuild import examples
from tests.conftest import MORPHS, run_distbuild

SYSTEM = "systems/example-system-x86_64.morph"


@pytest.fixture
def alias_args(tmp_path):
    examples.make_all(tmp_path / "repos" / "delta")
    return ["--definitions", str(MORPHS), "--work-dir", str(tmp_path / "work"),
            "--repo-alias", f"upstream={tmp_path}/repos/delta/%s#unused"]


def test_builds_a_chunk_with_its_dependencies(alias_args, tmp_path):
    proc = run_distbuild("build-step", *alias_args, "--staging-over-host", "--with-deps",
                         SYSTEM, "hello", check=True)
    out = proc.stdout.splitlines()
    built = [line.split()[1] for line in out if line.startswith("Building ")]
    assert built == ["chunk:example-core/libgreet", "chunk:example-core/base-files",
                     "stratum:example-core", "chunk:example-apps/hello"]
    artifacts = [line.split(": ", 1)[1] for line in out if line.startswith("Artifact: ")]
    assert any(a.endswith(".chunk.hello-bins") for a in artifacts)
    assert any(line.endswith('+ make PREFIX="$PREFIX"') for line in out)


def test_unknown_node_is_one_line(alias_args):
    proc = run_distbuild("build-step", *alias_args, SYSTEM, "nosuch")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "distbuild: error: example-system-x86_64: no chunk, stratum or system named "
        "'nosuch' in the graph"]


def test_staging_without_a_toolchain_explains_itself(alias_args):
    proc = run_distbuild("build-step", *alias_args, SYSTEM, "libgreet")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("distbuild: error: chunk:example-core/libgreet: sandbox setup "
                           "failed: execvp sh")
    assert "staging_over_host" in line

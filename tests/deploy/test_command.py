"""`distbuild deploy` as a user runs it: its own process, one-line errors, exit status."""

from __future__ import annotations

import shutil
import tarfile
import textwrap
from pathlib import Path

import pytest

from tests.conftest import MORPHS, run_distbuild
from tests.deploy.conftest import engine_systems, put_system

SYSTEM = "systems/example-system-x86_64.morph"


@pytest.fixture
def defs(tmp_path: Path) -> Path:
    path = tmp_path / "defs"
    shutil.copytree(MORPHS, path)
    (path / "clusters").mkdir(exist_ok=True)
    (path / "clusters" / "pair.morph").write_text(textwrap.dedent(f"""\
        name: pair
        kind: cluster
        systems:
        - morph: {SYSTEM}
          deploy-defaults:
            HOSTNAME: ${{site}}-box
          deploy:
            one: {{type: extensions/tar, location: {tmp_path}/one.tar}}
            two: {{type: tar, location: {tmp_path}/two.tar}}
        """))
    (path / "clusters" / "ghost.morph").write_text(
        "name: ghost\nkind: cluster\nsystems:\n- morph: systems/ghost.morph\n"
        "  deploy: {ghost: {type: tar, location: ghost.tar}}\n")
    return path


def deploy(defs: Path, *args: str, env: dict | None = None):
    return run_distbuild("deploy", "--offline", "--definitions", str(defs), *args,
                         env={"site": "lab", **(env or {})})


def test_deploys_chosen_deployment_with_settings(defs, artifact_cache, tmp_path):
    put_system(artifact_cache, defs, SYSTEM)
    proc = deploy(defs, "--artifact-cache-url", artifact_cache.url, "clusters/pair.morph",
                  "two", "two.HOSTNAME=special")
    assert proc.returncode == 0, proc.stderr
    assert f"Deployed two to {tmp_path}/two.tar" in proc.stdout
    assert not (tmp_path / "one.tar").exists()
    with tarfile.open(tmp_path / "two.tar") as tar:
        assert tar.extractfile("./etc/hostname").read() == b"special\n"


def test_cache_url_from_settings_file(defs, artifact_cache, tmp_path):
    put_system(artifact_cache, defs, SYSTEM)
    settings = tmp_path / "distbuild.yaml"
    settings.write_text(f"artifact_cache_url: {artifact_cache.url}\n")
    proc = deploy(defs, "clusters/pair.morph", "one", env={"DISTBUILD_CONFIG": str(settings)})
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(tmp_path / "one.tar") as tar:
        assert tar.extractfile("./etc/hostname").read() == b"lab-box\n"


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_not_built(defs, artifact_cache):
    proc = deploy(defs, "--artifact-cache-url", artifact_cache.url, "clusters/pair.morph")
    key = engine_systems(defs).system(SYSTEM).cache_key
    assert one_line_error(proc) == (
        f"distbuild: error: system example-system-x86_64 (cache key {key}) is not built; "
        f"build it with `distbuild --controller-initiator-address=HOST {SYSTEM}`, "
        "then deploy again")


@pytest.mark.parametrize("args, env, message", [
    (["clusters/pair.morph", "three"], {"site": "lab"},
     "no deployment named 'three' (deployments: one, two)"),
    (["clusters/pair.morph"], {}, "deployment 'one': HOSTNAME: variable $site is not set"),
    (["clusters/nope.morph"], {"site": "lab"}, "clusters/nope.morph"),
    (["clusters/ghost.morph"], {}, "deployment 'ghost': systems/ghost.morph: no such file"),
    (["clusters/pair.morph", "three.X=1"], {"site": "lab"}, "'three.X=...' names no deployment"),
])
def test_user_mistakes_are_one_line(defs, artifact_cache, args, env, message):
    proc = run_distbuild("deploy", "--offline", "--definitions", str(defs),
                         "--artifact-cache-url", artifact_cache.url, *args, env=env)
    assert message in one_line_error(proc)
    assert "Fetching" not in proc.stdout


def test_no_cache_configured(defs):
    proc = deploy(defs, "clusters/pair.morph")
    assert "no artifact cache" in one_line_error(proc)

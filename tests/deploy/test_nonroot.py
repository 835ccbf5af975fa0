"""Deploying as an ordinary user: fakeroot keeps the owners the build gave the system."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MORPHS, python_for_others
from tests.deploy.conftest import put_system

SYSTEM = "systems/example-system-x86_64.morph"
NOBODY = 65534

# Runs as the ordinary user: the same Deployer the command uses.
DEPLOY_AS_USER = """
import shutil, sys
from pathlib import Path
from distbuild.definitions import Aliases, Definitions, DirectorySource, OfflineResolver
from distbuild.deploy.cluster import expand, parse_arguments
from distbuild.deploy.deployer import Deployer
from distbuild.deploy.systems import DefinitionsSystems

defs_dir, url, use_fakeroot = sys.argv[1], sys.argv[2], sys.argv[3] == "yes"
defs = Definitions(DirectorySource(defs_dir))
systems = DefinitionsSystems(defs, OfflineResolver(), Aliases.from_config(None, None))
deployments = expand(defs.cluster("clusters/user.morph"), parse_arguments([]), {})
Deployer(Path(defs_dir), systems, url, progress=print,
         fakeroot=shutil.which("fakeroot") if use_fakeroot else None).deploy(deployments)
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder the ordinary user can use (pytest's tmp_path is private to root)."""
    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("fakeroot"):
        pytest.skip("needs root (to become another user), setpriv and fakeroot")
    path = Path(tempfile.mkdtemp(prefix="distbuild-user-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True,
                          text=True, check=True).stdout


# Without fakeroot, tar unpacking as a user also drops setuid bits.
@pytest.mark.parametrize("use_fakeroot, owner, mode", [("yes", 0, "04755"),
                                                       ("no", NOBODY, "0755")])
def test_rawdisk_as_ordinary_user(artifact_cache, shared_dir, use_fakeroot, owner, mode):
    defs = shared_dir / "defs"
    shutil.copytree(MORPHS, defs)
    put_system(artifact_cache, defs, SYSTEM)
    image = shared_dir / "user.img"
    (defs / "clusters" / "user.morph").write_text(textwrap.dedent(f"""\
        name: user
        kind: cluster
        systems:
        - morph: {SYSTEM}
          deploy:
            disk: {{type: rawdisk, location: {image}, DISK_SIZE: 32M, HOSTNAME: mine}}
        """))
    subprocess.run(["chmod", "-R", "a+rwX", str(defs)], check=True)
    # The checkout may be unreadable to the user (under a root-only mktemp -d).
    python, path = python_for_others(shared_dir / "python", "distbuild.deploy.deployer",
                                     "distbuild.deploy.systems", "distbuild.deploy.cluster")
    env = {"PATH": os.environ["PATH"], "HOME": str(shared_dir),
           "PYTHONPATH": path, "TMPDIR": str(shared_dir)}
    proc = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         python, "-c", DEPLOY_AS_USER, str(defs), artifact_cache.url, use_fakeroot],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert image.stat().st_uid == NOBODY
    tool = debugfs(image, "stat /usr/bin/greeting-tool")
    assert f"User: {owner:5d}   Group: {owner:5d}" in tool
    assert f"Mode:  {mode} " in tool
    assert f"User: {owner:5d}" in debugfs(image, "stat /etc/hostname")
    assert debugfs(image, "cat /etc/hostname") == "mine\n"
    assert subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True).returncode == 0

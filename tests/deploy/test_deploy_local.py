"""tar and rawdisk deployments of the example system, end to end through the Deployer."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import textwrap
from pathlib import Path

import pytest

from distbuild.deploy.cluster import expand, parse_arguments
from distbuild.deploy.deployer import Deployer
from distbuild.deploy.errors import DeployError, NotBuiltError
from distbuild.deploy.extensions import ExtensionFailed
from tests.conftest import MORPHS
from tests.deploy.conftest import engine_systems, load_cluster, put_system

SYSTEM = "systems/example-system-x86_64.morph"


@pytest.fixture
def defs(tmp_path: Path) -> Path:
    """A definitions checkout: the project's example morphs plus clusters written by tests."""
    path = tmp_path / "defs"
    shutil.copytree(MORPHS, path)
    (path / "clusters").mkdir(exist_ok=True)
    (path / "extensions").mkdir()
    return path


def deploy(defs: Path, cache, cluster_text: str, *args: str,
           environ: dict | None = None, lines: list[str] | None = None) -> list[str]:
    """Deploy the cluster; progress lines go to `lines` (so a failed deploy's are kept too)."""
    cluster_path = defs / "clusters" / "test.morph"
    cluster_path.write_text(textwrap.dedent(cluster_text))
    deployments = expand(load_cluster(cluster_path), parse_arguments(args), environ or {})
    lines = [] if lines is None else lines
    env = {k: v for k, v in os.environ.items() if k != "HOSTNAME"}
    Deployer(defs, engine_systems(defs), cache.url,
             progress=lines.append, environ=env).deploy(deployments)
    return lines


def debugfs(image: Path, request: str) -> str:
    proc = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True,
                          text=True, check=True)
    return proc.stdout


def test_tar_deployment(defs, artifact_cache, tmp_path):
    put_system(artifact_cache, defs, SYSTEM)
    out = tmp_path / "example.tar"
    lines = deploy(defs, artifact_cache, f"""\
        name: test
        kind: cluster
        systems:
        - morph: {SYSTEM}
          deploy:
            example:
              type: tar
              location: {out}
              HOSTNAME: tarhost
        """)
    with tarfile.open(out) as tar:
        assert tar.extractfile("./etc/hostname").read() == b"tarhost\n"
        assert tar.extractfile("./etc/motd").read().startswith(b"Welcome")
        tool = tar.getmember("./usr/bin/greeting-tool")
        assert (tool.mode & 0o7777, tool.uid, tool.gid) == (0o4755, 0, 0)
        assert tar.getmember("./usr/lib/libgreet.so").linkname == "libgreet.so.1"
    assert f"[tar.write] Creating tarball {out}" in lines
    assert not list(tmp_path.glob("*.part"))
    # Fetched by the cache key the definitions give, and only once.
    key = engine_systems(defs).system(SYSTEM).cache_key
    assert [line for line in lines if line.startswith("Fetching")] == [
        f"Fetching example-system-x86_64 ({key[:12]})"]


def test_rawdisk_deployment(defs, artifact_cache, tmp_path):
    put_system(artifact_cache, defs, SYSTEM)
    image = tmp_path / "example.img"
    deploy(defs, artifact_cache, f"""\
        name: test
        kind: cluster
        systems:
        - morph: {SYSTEM}
          deploy:
            example:
              type: extensions/rawdisk
              location: {image}
              DISK_SIZE: 64M
              HOSTNAME: diskhost
        """)
    st = image.stat()
    assert st.st_size == 64 << 20
    assert st.st_blocks * 512 < st.st_size // 2, "image should be sparse"
    assert debugfs(image, "cat /etc/hostname") == "diskhost\n"
    assert debugfs(image, "cat /usr/bin/hello") == "#!/bin/sh\necho hello\n"
    stat = debugfs(image, "stat /usr/bin/greeting-tool")
    assert "Mode:  04755" in stat and "User:     0   Group:     0" in stat
    assert "Fast link dest: \"libgreet.so.1\"" in debugfs(image, "stat /usr/lib/libgreet.so")
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_rawdisk_without_disk_size_fits_the_tree(defs, artifact_cache, tmp_path):
    put_system(artifact_cache, defs, SYSTEM)
    image = tmp_path / "fit.img"
    deploy(defs, artifact_cache, f"""\
        name: test
        kind: cluster
        systems:
        - morph: {SYSTEM}
          deploy: {{fit: {{type: rawdisk, location: {image}, HOSTNAME: fit}}}}
        """)
    assert debugfs(image, "cat /etc/hostname") == "fit\n"
    assert subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True).returncode == 0


def test_not_built_names_the_system_and_how_to_build(defs, artifact_cache, tmp_path):
    out = tmp_path / "never.tar"
    with pytest.raises(NotBuiltError) as e:
        deploy(defs, artifact_cache, f"""\
            name: test
            kind: cluster
            systems:
            - morph: {SYSTEM}
              deploy: {{x: {{type: tar, location: {out}}}}}
            """)
    message = str(e.value)
    key = engine_systems(defs).system(SYSTEM).cache_key
    assert f"system example-system-x86_64 (cache key {key}) is not built" in message
    assert f"distbuild --controller-initiator-address=HOST {SYSTEM}" in message
    assert not out.exists()
    assert not list(tmp_path.rglob("*.part"))


def test_unreachable_cache_is_a_clear_error(defs, tmp_path):
    class Nowhere:
        url = "http://127.0.0.1:9"

    with pytest.raises(DeployError, match=r"cannot fetch .*: cannot reach artifact cache"):
        deploy(defs, Nowhere, f"""\
            name: test
            kind: cluster
            systems:
            - morph: {SYSTEM}
              deploy: {{x: {{type: tar, location: {tmp_path / 'x.tar'}}}}}
            """)


@pytest.mark.parametrize("settings, message", [
    ("location: {existing}", "already exists"),
    ("location: {tmp}/no/such/dir/x.img", "directory .* does not exist"),
    ("location: {tmp}/x.img, DISK_SIZE: lots", "DISK_SIZE must be a size"),
])
def test_rawdisk_check_refuses_before_fetching(defs, artifact_cache, tmp_path, settings,
                                               message):
    put_system(artifact_cache, defs, SYSTEM)
    existing = tmp_path / "existing.img"
    existing.write_text("keep me")
    fields = settings.format(existing=existing, tmp=tmp_path)
    lines: list[str] = []
    with pytest.raises(ExtensionFailed, match=message) as e:
        deploy(defs, artifact_cache, lines=lines, cluster_text=f"""\
            name: test
            kind: cluster
            systems:
            - morph: {SYSTEM}
              deploy: {{x: {{type: rawdisk, {fields}}}}}
            """)
    assert "deployment 'x': rawdisk.check" in str(e.value)
    assert not [line for line in lines if line.startswith("Fetching")]
    assert existing.read_text() == "keep me"


def test_tar_check_refuses_existing_file_for_any_deployment_first(defs, artifact_cache,
                                                                  tmp_path):
    """The second deployment's refusal stops the first before it writes anything."""
    put_system(artifact_cache, defs, SYSTEM)
    (tmp_path / "second.tar").write_text("keep me")
    lines: list[str] = []
    with pytest.raises(ExtensionFailed, match=r"second\.tar already exists"):
        deploy(defs, artifact_cache, lines=lines, cluster_text=f"""\
            name: test
            kind: cluster
            systems:
            - morph: {SYSTEM}
              deploy:
                first: {{type: tar, location: {tmp_path / 'first.tar'}}}
                second: {{type: tar, location: {tmp_path / 'second.tar'}}}
            """)
    assert not (tmp_path / "first.tar").exists()
    assert not [line for line in lines if line.startswith("Fetching")]


def test_missing_extension_is_found_before_anything_runs(defs, artifact_cache, tmp_path):
    lines: list[str] = []
    with pytest.raises(DeployError, match=r"deployment 'x'.*no write extension 'nfsbooty.write'"):
        deploy(defs, artifact_cache, lines=lines, cluster_text=f"""\
            name: test
            kind: cluster
            systems:
            - morph: {SYSTEM}
              deploy: {{x: {{type: extensions/nfsbooty, location: {tmp_path}}}}}
            """)
    assert not [line for line in lines if line.startswith("Fetching")]


def test_subsystem_is_written_into_parent_tree(defs, artifact_cache, tmp_path):
    (defs / "systems" / "tiny-system.morph").write_text(
        "name: tiny\nkind: system\narch: x86_64\n"
        "strata: [{name: example-core, morph: strata/example-core.morph}]\n")
    put_system(artifact_cache, defs, SYSTEM)
    put_system(artifact_cache, defs, "systems/tiny-system.morph",
               {"etc/tiny": (0o600, b"tiny\n")})
    out = tmp_path / "parent.tar"
    deploy(defs, artifact_cache, f"""\
        name: test
        kind: cluster
        systems:
        - morph: {SYSTEM}
          deploy:
            parent: {{type: tar, location: {out}, HOSTNAME: parent}}
          subsystems:
          - morph: systems/tiny-system.morph
            deploy:
              child: {{type: tar, location: /boot/tiny.tar}}
        """)
    with tarfile.open(out) as tar:
        assert tar.extractfile("./etc/hostname").read() == b"parent\n"
        inner = tar.extractfile("./boot/tiny.tar")
        with tarfile.open(fileobj=inner) as child:
            assert child.extractfile("./etc/tiny").read() == b"tiny\n"
            assert child.getmember("./etc/tiny").mode & 0o777 == 0o600


# Baserock's own tar.write, as its definitions carried it, and a configure
# extension written the way Baserock's shell extensions were.
BASEROCK_TAR_WRITE = """\
#!/bin/sh
# Copyright (C) 2013,2015  Codethink Limited
#
# A Morph write extension to deploy to a .tar file

set -eu

tar -C "$1" -cf "$2" .
"""

BASEROCK_STYLE_CONFIGURE = """\
#!/bin/sh
# Append to the message of the day, and record the settings morph passed.
set -eu

ROOT="$1"
if [ "$UPGRADE" != no ]; then
    echo "This is not an upgrade" >&2
    exit 1
fi
echo "Adding $MOTD_EXTRA to motd"
echo "$MOTD_EXTRA" >> "$ROOT/etc/motd"
printf '%s\\n' "$DISTBUILD_WORKER" "$NOTHING" "$TMPDIR" > "$ROOT/etc/seen"
touch "$TMPDIR/scratch"
"""


def test_baserock_shell_extensions_run_unchanged(defs, artifact_cache, tmp_path):
    ext = defs / "extensions"
    (ext / "tar.write").write_text(BASEROCK_TAR_WRITE)
    (ext / "motd.configure").write_text(BASEROCK_STYLE_CONFIGURE)
    for f in ext.iterdir():
        f.chmod(0o755)
    morph = defs / SYSTEM
    morph.write_text(morph.read_text() + "- extensions/motd\n")
    put_system(artifact_cache, defs, SYSTEM)
    out = tmp_path / "br.tar"
    lines = deploy(defs, artifact_cache, f"""\
        name: test
        kind: cluster
        systems:
        - morph: {SYSTEM}
          deploy-defaults: {{DISTBUILD_WORKER: yes, NOTHING: null}}
          deploy:
            br: {{type: extensions/tar, location: {out}, MOTD_EXTRA: "$greeting"}}
        """, environ={"greeting": "Hi from Baserock"})
    assert "[motd.configure] Adding Hi from Baserock to motd" in lines
    # Baserock's tar.write, not the project's: it says nothing.
    assert not any(line.startswith("[tar.write]") for line in lines)
    with tarfile.open(out) as tar:
        assert tar.extractfile("./etc/motd").read().endswith(b"Hi from Baserock\n")
        worker, nothing, tmpdir = tar.extractfile("./etc/seen").read().decode().split()
    assert (worker, nothing) == ("True", "None")
    assert "distbuild-motd.configure-" in tmpdir and not os.path.exists(tmpdir)


def test_failing_extension_shows_its_stderr(defs, artifact_cache, tmp_path):
    ext = defs / "extensions" / "broken.write"
    ext.write_text("#!/bin/sh\necho 'working on it'\necho 'disk on fire' >&2\nexit 3\n")
    ext.chmod(0o755)
    put_system(artifact_cache, defs, SYSTEM)
    lines: list[str] = []
    with pytest.raises(ExtensionFailed) as e:
        lines = deploy(defs, artifact_cache, f"""\
            name: test
            kind: cluster
            systems:
            - morph: {SYSTEM}
              deploy: {{x: {{type: broken, location: {tmp_path / 'x'}}}}}
            """)
    assert "broken.write failed (exit status 3):\n    disk on fire" in str(e.value)
    assert "deployment 'x': broken.write" in str(e.value)
    del lines

"""Deploying what a real network built: `distbuild up`, a build, then `distbuild deploy`.

No assembled tarball here: the system artifact is the one the workers
built, found by the cache key the deploy computes the way the controller
did (refs resolved through git mirrors of the trove).
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import textwrap

import pytest

from tests.conftest import run_distbuild
from tests.network_process import NetworkProcess

pytestmark = pytest.mark.slow

SYSTEM = "systems/example-system-x86_64.morph"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A network that has built the example system, and the checkout it built from."""
    root = tmp_path_factory.mktemp("built")
    net = NetworkProcess(root, workers=2).start()
    try:
        checkout = net.checkout(root / "defs")
        proc = net.initiator(checkout, SYSTEM)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield net, checkout
    finally:
        net.stop()


def test_deploy_the_built_example_system(built, tmp_path):
    net, checkout = built
    (checkout / "clusters").mkdir(exist_ok=True)
    (checkout / "clusters" / "built.morph").write_text(textwrap.dedent(f"""\
        name: built
        kind: cluster
        systems:
        - morph: {SYSTEM}
          deploy-defaults: {{HOSTNAME: built-example}}
          deploy:
            tarball: {{type: tar, location: {tmp_path}/built.tar}}
            disk: {{type: rawdisk, location: {tmp_path}/built.img, DISK_SIZE: 64M}}
        """))
    proc = run_distbuild("deploy", "--config", str(net.config), "--definitions", str(checkout),
                         "--mirror-dir", str(tmp_path / "mirrors"), "clusters/built.morph",
                         timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    key = net.node_key("system:example-system-x86_64")
    assert f"Fetching example-system-x86_64 ({key[:12]})" in proc.stdout
    with tarfile.open(tmp_path / "built.tar") as tar:
        names = tar.getnames()
        assert tar.extractfile("./etc/hostname").read() == b"built-example\n"
    image = tmp_path / "built.img"
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
    listing = subprocess.run(["debugfs", "-R", "ls -p /etc", str(image)], capture_output=True,
                             text=True, check=True).stdout
    etc = {line.split("/")[5] for line in listing.splitlines() if line.count("/") >= 6}
    assert {"hostname", "motd", "hello-version"} <= etc
    hello = subprocess.run(["debugfs", "-R", "stat /usr/bin/hello", str(image)],
                           capture_output=True, text=True, check=True).stdout
    assert "Mode:  0755" in hello
    # What the workers built: hello linked against libgreet, and the file the
    # system-integration command ran at assembly time.
    assert {"./usr/bin/hello", "./usr/lib/libgreet.so.1", "./etc/hello-version"} <= set(names)


def test_changed_definitions_are_not_built(built, tmp_path):
    """An edit the network never built gives a new cache key: deploy says to build first."""
    net, checkout = built
    changed = tmp_path / "changed"
    shutil.copytree(checkout, changed)
    motd = changed / "strata" / "example-apps" / "motd.morph"
    motd.write_text(motd.read_text() + "- echo changed >> \"$DESTDIR/etc/motd\"\n")
    (changed / "clusters").mkdir(exist_ok=True)
    (changed / "clusters" / "one.morph").write_text(textwrap.dedent(f"""\
        name: one
        kind: cluster
        systems:
        - morph: {SYSTEM}
          deploy: {{one: {{type: tar, location: {tmp_path}/one.tar}}}}
        """))
    proc = run_distbuild("deploy", "--config", str(net.config), "--definitions", str(changed),
                         "--mirror-dir", str(tmp_path / "mirrors"), "clusters/one.morph",
                         timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("distbuild: error: system example-system-x86_64 (cache key ")
    assert f"is not built; build it with `distbuild --controller-initiator-address=HOST " \
           f"{SYSTEM}`" in proc.stderr
    assert not (tmp_path / "one.tar").exists()

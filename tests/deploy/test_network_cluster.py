"""The project's own cluster: a distbuild network of three KVM guests, deployed by the CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

from distbuild import config, keygen
from distbuild.controller.service import ControllerSettings
from distbuild.definitions import Definitions, DirectorySource
from distbuild.deploy.cluster import expand, parse_arguments
from distbuild.worker.service import WorkerConfig
from tests.conftest import MORPHS, run_distbuild
from tests.deploy.conftest import EXAMPLE_FILES, put_system
from tests.deploy.sshhost import SSHHost

CLUSTER = "clusters/distbuild-network-kvm.morph"
SYSTEM = "systems/distbuild-system-x86_64.morph"
NODES = ("distbuild-controller", "distbuild-worker0", "distbuild-worker1")


def debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True,
                          text=True, check=True).stdout


def test_cluster_expands_to_one_controller_and_two_workers():
    cluster = Definitions(DirectorySource(MORPHS)).cluster(CLUSTER)
    variables = ["VM_USER=me", "VM_HOST=vmhost", "VM_IMAGE_DIR=/srv/vms", "TROVE_HOST=trove",
                 "DISTBUILD_KEYS=keys", "ADMIN_SSH_KEY=me.pub"]
    nodes = expand(cluster, parse_arguments(variables), {})
    assert [n.id for n in nodes] == list(NODES)
    controller, worker0, _ = nodes
    assert controller.location == \
        "kvm+ssh://me@vmhost/distbuild-controller/srv/vms/distbuild-controller.img"
    assert controller.settings["DISTBUILD_CONTROLLER"] == "True"
    assert controller.settings["HOSTNAME"] == "distbuild-controller"
    assert worker0.settings["DISTBUILD_WORKER"] == "True"
    assert worker0.settings["CONTROLLERHOST"] == "distbuild-controller"


def test_deploy_distbuild_network_to_kvm(artifact_cache, tmp_path):
    put_system(artifact_cache, MORPHS, SYSTEM, {
        **EXAMPLE_FILES, "usr/bin/distbuild": (0o755, b"#!/usr/bin/python3\n")})
    vmhost = SSHHost.start(tmp_path / "home")
    try:
        vms = tmp_path / "vms"
        vms.mkdir()
        keys = tmp_path / "keys"
        keygen.generate(keys, ("distbuild-controller", [7878, 3434]), ("trove.lab", [2222]))
        (tmp_path / "admin.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAdmin admin\n")
        proc = run_distbuild(
            "deploy", "--offline", "--definitions", str(MORPHS),
            "--artifact-cache-url", artifact_cache.url, CLUSTER,
            f"VM_USER={vmhost.user}", f"VM_HOST=127.0.0.1:{vmhost.port}",
            f"VM_IMAGE_DIR={vms}", "TROVE_HOST=trove.lab",
            f"DISTBUILD_KEYS={keys}", f"ADMIN_SSH_KEY={tmp_path / 'admin.pub'}",
            *(f"{node}.DISK_SIZE=128M" for node in NODES),
            env={"HOME": str(vmhost.home), "LIBVIRT_URI": "test:///default"}, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        vmhost.stop()
    for node in NODES:
        assert f"[kvm.write] Started guest {node}" in proc.stdout
        image = vms / f"{node}.img"
        st = image.stat()
        assert st.st_size == 128 << 20 and st.st_blocks * 512 < st.st_size // 4
        fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout
        assert debugfs(image, "cat /etc/hostname") == f"{node}\n"
        conf_text = debugfs(image, "cat /etc/distbuild/distbuild.conf")
        conf_file = tmp_path / f"{node}.conf"
        conf_file.write_text(conf_text)
        conf = config.load(conf_file)
        is_controller = node == "distbuild-controller"
        assert conf["distbuild_controller"] is is_controller
        assert conf["distbuild_worker"] is not is_controller
        assert conf["trove_host"] == "trove.lab"
        assert "Mode:  0600" in debugfs(image, "stat /etc/distbuild/worker.key")
        if is_controller:
            settings = config.section(ControllerSettings, conf["controller"], node)
            assert settings.allowed_workers == ["distbuild-worker0", "distbuild-worker1"]
            assert "Mode:  0600" in debugfs(image, "stat /etc/distbuild/token_secret")
        else:
            worker = config.section(WorkerConfig, conf["worker"], node)
            assert (worker.name, worker.controller_address) == (node, "distbuild-controller")
        unit = "distbuild-controller" if is_controller else "distbuild-worker"
        link = debugfs(image, f"stat /etc/systemd/system/multi-user.target.wants/{unit}.service")
        assert f'Fast link dest: "/etc/systemd/system/{unit}.service"' in link
        assert "admin" in debugfs(image, "cat /root/.ssh/authorized_keys")
        fstab = debugfs(image, "cat /etc/fstab")
        assert ("/srv/distbuild" in fstab) is not is_controller
    assert "WORKERS" in debugfs(vms / "distbuild-controller.img",
                                "cat /etc/distbuild/distbuild.conf")

"""kvm deployments: a real SSH server on 127.0.0.1 as the VM host, libvirt's test driver."""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import libvirt
import pytest

from distbuild.deploy import kvm
from distbuild.deploy.cluster import expand, parse_arguments
from distbuild.deploy.deployer import Deployer
from distbuild.deploy.extensions import (
    ExtensionFailed,
    extension_environment,
    require_extension,
    run_extension,
)
from distbuild.deploy.writeext import ExtensionError
from tests.conftest import MORPHS, PROJECT
from tests.deploy.conftest import engine_systems, load_cluster, put_system
from tests.deploy.sshhost import SSHHost

SYSTEM = "systems/example-system-x86_64.morph"


@pytest.fixture
def vmhost(tmp_path: Path) -> Iterator[SSHHost]:
    host = SSHHost.start(tmp_path / "home")
    (tmp_path / "vms").mkdir()
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def test_conn() -> Iterator[libvirt.virConnect]:
    """test:///default, held open so that in-process extension code shares its state."""
    conn = libvirt.open("test:///default")
    try:
        yield conn
    finally:
        for dom in conn.listAllDomains():
            if dom.name() != "test":
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        conn.close()


def location(host: SSHHost, guest: str, path: Path) -> str:
    return f"kvm+ssh://{host.user}@127.0.0.1:{host.port}/{guest}{path}"


def base_env(host: SSHHost) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HOSTNAME"}
    env["HOME"] = str(host.home)
    return env


def make_rootfs(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("guest\n")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "hello").write_bytes(b"#!/bin/sh\necho hello\n")
    return root


def assert_sparse_image(image: Path, size: int) -> None:
    st = image.stat()
    assert st.st_size == size
    assert st.st_blocks * 512 < size // 4, f"{st.st_blocks * 512} bytes allocated"
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_kvm_write_defines_and_starts_guest(vmhost, test_conn, tmp_path, monkeypatch):
    """The write runs in-process so the test inspects the very libvirt state it made."""
    monkeypatch.setenv("HOME", str(vmhost.home))
    rootfs = make_rootfs(tmp_path / "rootfs")
    image = tmp_path / "vms" / "worker0.img"
    disk = tmp_path / "vms" / "worker0-src.img"
    disk.write_bytes(b"")
    env = extension_environment({
        "LIBVIRT_URI": "test:///default", "DISK_SIZE": "256M", "RAM_SIZE": "2G",
        "VCPUS": "3", "ATTACH_DISKS": f"{disk}:/dev/vg/worker0_src",
        "NIC_CONFIG": "network=default,mac=52:54:00:12:34:56 bridge=br0",
        "AUTOSTART": "True",
    }, tmp_path)
    kvm.write(rootfs, location(vmhost, "distbuild-worker0", image), env)

    assert_sparse_image(image, 256 << 20)
    assert subprocess.run(["debugfs", "-R", "cat /etc/hostname", str(image)],
                          capture_output=True, text=True).stdout == "guest\n"
    dom = test_conn.lookupByName("distbuild-worker0")
    assert dom.isActive() and dom.autostart()
    state, max_kib, _, vcpus, _ = dom.info()
    assert (state, max_kib, vcpus) == (libvirt.VIR_DOMAIN_RUNNING, 2 << 20, 3)
    xml = ElementTree.fromstring(dom.XMLDesc())
    sources = [(d.find("target").get("dev"), d.find("source").attrib)
               for d in xml.iter("disk")]
    assert sources == [("vda", {"file": str(image)}), ("vdb", {"file": str(disk)}),
                       ("vdc", {"dev": "/dev/vg/worker0_src"})]
    nics = [(i.get("type"), i.find("source").attrib) for i in xml.iter("interface")]
    assert nics == [("network", {"network": "default"}), ("bridge", {"bridge": "br0"})]
    assert xml.find("devices/interface/mac").get("address") == "52:54:00:12:34:56"
    assert vmhost.connections == 1
    assert not (tmp_path / "distbuild-worker0.img").exists(), "local image left behind"


def test_failed_write_removes_what_it_created(vmhost, test_conn, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(vmhost.home))
    # A guest of the same name appears between check and write: define fails.
    test_conn.defineXML("<domain type='test'><name>late</name><memory>65536</memory>"
                        "<os><type>hvm</type></os></domain>")
    image = tmp_path / "vms" / "late.img"
    env = extension_environment({"LIBVIRT_URI": "test:///default", "DISK_SIZE": "64M"},
                                tmp_path)
    rootfs = make_rootfs(tmp_path / "rootfs")
    (rootfs / "boot").mkdir()
    (rootfs / "boot" / "vmlinuz").write_bytes(b"kernel")
    with pytest.raises(ExtensionError, match=r"libvirt refused guest late: .*already exists"):
        kvm.write(rootfs, location(vmhost, "late", image), env)
    assert list((tmp_path / "vms").iterdir()) == [], "image or kernel left on the host"
    assert not test_conn.lookupByName("late").isActive(), "someone else's guest was touched"


def test_kvm_deployment_through_cluster(vmhost, artifact_cache, tmp_path):
    """The whole path with the extension as its own process: cluster, cache, ssh, libvirt."""
    put_system(artifact_cache, MORPHS, SYSTEM)
    image = tmp_path / "vms" / "controller.img"
    cluster = tmp_path / "cluster.morph"
    cluster.write_text(textwrap.dedent(f"""\
        name: test
        kind: cluster
        systems:
        - morph: {SYSTEM}
          deploy-defaults: {{DISK_SIZE: 128M, RAM_SIZE: 1G, VCPUS: 2,
                            LIBVIRT_URI: "test:///default"}}
          deploy:
            controller:
              type: extensions/kvm
              location: kvm+ssh://$vm_user@127.0.0.1:$vm_port/distbuild-controller{image}
              HOSTNAME: controller
        """))
    deployments = expand(load_cluster(cluster), parse_arguments(
        [f"vm_user={vmhost.user}", f"vm_port={vmhost.port}"]), {})
    lines: list[str] = []
    Deployer(MORPHS, engine_systems(MORPHS), artifact_cache.url,
             progress=lines.append, environ=base_env(vmhost)).deploy(deployments)
    assert_sparse_image(image, 128 << 20)
    out = subprocess.run(["debugfs", "-R", "cat /etc/hostname", str(image)],
                         capture_output=True, text=True).stdout
    assert out == "controller\n"
    assert "[kvm.write] Started guest distbuild-controller" in lines
    # kvm.check and kvm.write each made their own SSH connection.
    assert vmhost.connections == 2


NODE_XML = """\
<node>
  <domain type='test'>
    <name>taken</name><memory>65536</memory><os><type>hvm</type></os>
  </domain>
</node>
"""


@pytest.mark.parametrize("guest, settings, message", [
    ("taken", {}, "a guest named taken already exists"),
    ("fresh", {"ATTACH_DISKS": "{vms}/missing-src.img"},
     "ATTACH_DISKS: {vms}/missing-src.img does not exist on 127.0.0.1"),
    ("fresh", {"path": "{vms}/existing.img"}, "{vms}/existing.img already exists on 127.0.0.1"),
    ("fresh", {"path": "{vms}/no/dir/x.img"}, "directory {vms}/no/dir does not exist"),
    ("fresh", {"NIC_CONFIG": "network=nosuch"}, "libvirt network nosuch does not exist"),
    ("fresh", {"NIC_CONFIG": "wifi=yes"}, "needs exactly one of network=NAME or bridge=NAME"),
    ("fresh", {"VCPUS": "many"}, "VCPUS must be a whole number"),
    ("fresh", {"RAM_SIZE": "lots"}, "RAM_SIZE must be a size"),
    ("fresh", {"UPGRADE": "yes"}, "upgrading a kvm guest is not supported"),
    ("fresh", {"DOMAIN_TYPE": "xen"}, "DOMAIN_TYPE must be one of kvm, qemu, not 'xen'"),
    ("fresh", {"DOMAIN_TYPE": "kvm"}, "DOMAIN_TYPE: test://.* offers no kvm guests "
     "\\(it offers test\\)"),
    ("fresh", {"location": "kvm://host/guest/x.img"}, "is not kvm\\+ssh://"),
])
def test_kvm_check_refuses(vmhost, tmp_path, guest, settings, message):
    vms = tmp_path / "vms"
    (vms / "existing.img").write_text("keep")
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    settings = {k: v.format(vms=vms) for k, v in settings.items()}
    path = settings.pop("path", f"{vms}/new.img")
    loc = settings.pop("location", location(vmhost, guest, Path(path)))
    base = base_env(vmhost)
    if "UPGRADE" in settings:
        base["UPGRADE"] = settings.pop("UPGRADE")
    check = require_extension("kvm", "check", MORPHS, "test")
    env = {"LIBVIRT_URI": f"test://{node}", **settings}
    runner_env = dict(base)
    with pytest.raises(ExtensionFailed, match=message.format(vms=vms)):
        _run_check(check, loc, env, runner_env, upgrade=base.get("UPGRADE"))
    assert sorted(p.name for p in vms.iterdir()) == ["existing.img"]
    assert (vms / "existing.img").read_text() == "keep"


def _run_check(check: Path, loc: str, env: dict, base: dict, upgrade: str | None) -> None:
    if upgrade:
        # The runner always says UPGRADE=no; call the extension as an upgrade would.
        proc = subprocess.run([str(check), loc], capture_output=True, text=True,
                              env={**extension_environment(env, Path(base["HOME"]), base),
                                   "UPGRADE": upgrade})
        if proc.returncode:
            raise ExtensionFailed(proc.stderr)
        return
    run_extension(check, [loc], env, cwd=PROJECT, progress=lambda _: None, where="test",
                  base_environ=base)


def test_kvm_check_accepts_a_good_deployment(vmhost, tmp_path):
    disk = tmp_path / "vms" / "src.img"
    disk.write_bytes(b"")
    check = require_extension("extensions/kvm", "check", MORPHS, "test")
    run_extension(check, [location(vmhost, "fresh", tmp_path / "vms" / "new.img")],
                  {"LIBVIRT_URI": "test:///default", "ATTACH_DISKS": str(disk),
                   "NIC_CONFIG": "network=default"},
                  cwd=PROJECT, progress=lambda _: None, where="test",
                  base_environ=base_env(vmhost))


def test_unknown_host_key_is_refused(vmhost, tmp_path):
    (vmhost.home / ".ssh" / "known_hosts").write_text("")
    check = require_extension("kvm", "check", MORPHS, "test")
    with pytest.raises(ExtensionFailed, match=r"the host key of 127\.0\.0\.1 is not known"):
        run_extension(check, [location(vmhost, "fresh", tmp_path / "vms" / "new.img")],
                      {"LIBVIRT_URI": "test:///default"}, cwd=PROJECT,
                      progress=lambda _: None, where="test", base_environ=base_env(vmhost))


def test_guest_boots_the_systems_kernel_directly(vmhost, test_conn, tmp_path, monkeypatch):
    """The image has no bootloader: the kernel goes beside it and libvirt boots it."""
    monkeypatch.setenv("HOME", str(vmhost.home))
    rootfs = make_rootfs(tmp_path / "rootfs")
    (rootfs / "boot").mkdir()
    (rootfs / "boot" / "vmlinuz-6.1").write_bytes(b"\x7fkernel" * 1000)
    (rootfs / "boot" / "vmlinuz").symlink_to("/boot/vmlinuz-6.1")
    (rootfs / "boot" / "initramfs.gz").write_bytes(b"initramfs")
    image = tmp_path / "vms" / "booted.img"
    env = extension_environment({"LIBVIRT_URI": "test:///default", "DISK_SIZE": "64M",
                                 "KERNEL_ARGS": "quiet init=/sbin/init"}, tmp_path)
    kvm.write(rootfs, location(vmhost, "booted", image), env)
    kernel = Path(f"{image}.vmlinuz")
    assert kernel.read_bytes() == b"\x7fkernel" * 1000
    assert Path(f"{image}.initramfs").read_bytes() == b"initramfs"
    os_xml = ElementTree.fromstring(test_conn.lookupByName("booted").XMLDesc()).find("os")
    assert os_xml.findtext("kernel") == str(kernel)
    assert os_xml.findtext("initrd") == f"{image}.initramfs"
    assert os_xml.findtext("cmdline") == \
        "root=/dev/vda rootfstype=ext4 rw console=ttyS0 quiet init=/sbin/init"
    # The serial console is a pty for `virsh console`, logged to a file beside the image.
    serial = ElementTree.fromstring(test_conn.lookupByName("booted").XMLDesc()).find(
        "devices/serial")
    assert serial.get("type") == "pty"
    assert serial.find("log").attrib == {"file": f"{image}.console", "append": "off"}


@pytest.mark.parametrize("leftover", ["vmlinuz", "console"])
def test_kvm_check_refuses_a_leftover_kernel_or_console(vmhost, tmp_path, leftover):
    (tmp_path / "vms" / f"new.img.{leftover}").write_text("old")
    check = require_extension("kvm", "check", MORPHS, "test")
    with pytest.raises(ExtensionFailed, match=rf"new\.img\.{leftover} already exists"):
        run_extension(check, [location(vmhost, "fresh", tmp_path / "vms" / "new.img")],
                      {"LIBVIRT_URI": "test:///default"}, cwd=PROJECT,
                      progress=lambda _: None, where="test", base_environ=base_env(vmhost))
    assert (tmp_path / "vms" / f"new.img.{leftover}").read_text() == "old"

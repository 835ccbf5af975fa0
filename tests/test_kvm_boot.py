"""Deployed systems really boot: QEMU guests driven by libvirt's qemu driver.

A real network builds the kvm-boot system (a Linux kernel from Debian's
linux source and the distbuild-boot init) once per test run, in the
background from the start (tests/kvm_prebuild.py); the cluster's network
nodes share that kernel from the trove's cache. Each test
deploys with `distbuild deploy` through kvm+ssh:// (an SSH server on
127.0.0.1 standing in for the VM host) to a libvirt daemon of the tests'
own, waits for the guests to power themselves off, and reads their serial
consoles. The guests have no network interface and no libvirt network is
started. A failing test keeps the consoles under $DISTBUILD_TEST_ARTIFACTS
(default test-artifacts/ in the checkout) and prints where.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from distbuild import keygen
from tests import kvm_prebuild
from tests.conftest import PROJECT, run_distbuild, skip_or_fail
from tests.deploy.sshhost import SSHHost
from tests.libvirt_process import LibvirtSession
from tests.network_process import NetworkProcess

pytestmark = pytest.mark.slow

ARTIFACTS_ENV = "DISTBUILD_TEST_ARTIFACTS"


def need_kvm_host() -> None:
    """Skip (or fail under DISTBUILD_REQUIRE_ALL=1) where guests cannot run, with one line."""
    reason = kvm_prebuild.missing()
    if reason:
        skip_or_fail(reason)


def domain_type() -> str:
    """kvm, except under PVM, whose KVM runs only PVM guest kernels (stock Linux hangs)."""
    if Path("/sys/module/kvm_pvm").exists():
        return "qemu"
    return "kvm"


@pytest.fixture(scope="module")
def built(request):
    """The network that built the kvm-boot system, and the checkout it built from."""
    need_kvm_host()
    if not kvm_prebuild.started():
        kvm_prebuild.start_if_possible()
    net, checkout, phases = kvm_prebuild.result()
    # Shown in every run, not captured: the figures docs/benchmarks.md quotes.
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nkvm-boot system built: {phases}")
    return net, checkout


@pytest.fixture
def libvirt_host():
    session = LibvirtSession().start()
    try:
        yield session
    finally:
        session.stop()
    assert session.qemu_pids() == [], "a QEMU process outlived the test"


def deploy(net: NetworkProcess, checkout: Path, session: LibvirtSession, home: Path,
           cluster: str, *args: str) -> None:
    """`distbuild deploy CLUSTER` to the session daemon, through a kvm+ssh:// stand-in host."""
    host = SSHHost.start(home, owner=session.owner)
    try:
        proc = run_distbuild("deploy", "--config", str(net.config), "--definitions",
                             str(checkout), "--mirror-dir", str(home / "mirrors"), cluster,
                             f"VM_USER={host.user}", f"VM_HOST=127.0.0.1:{host.port}",
                             f"VM_IMAGE_DIR={session.images}", *args,
                             env={"HOME": str(host.home), "LIBVIRT_URI": session.uri,
                                  "DOMAIN_TYPE": domain_type()}, timeout=600)
    finally:
        host.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr


def wait_shut_off(session: LibvirtSession, guests: list[str], timeout: float) -> dict:
    """Each guest's (state, reason) once every one is shut off, or when `timeout` passes."""
    import libvirt

    conn = libvirt.open(session.uri)
    try:
        deadline = time.monotonic() + timeout
        while True:
            states = {g: tuple(conn.lookupByName(g).state()) for g in guests}
            done = all(s[0] == libvirt.VIR_DOMAIN_SHUTOFF for s in states.values())
            if done or time.monotonic() > deadline:
                return states
            time.sleep(0.2)
    finally:
        conn.close()


def keep_consoles(session: LibvirtSession, guests: list[str], test: str) -> Path:
    """Copy the guests' console logs where CI keeps test artifacts; returns the folder."""
    dest = Path(os.environ.get(ARTIFACTS_ENV) or PROJECT / "test-artifacts") / test
    dest.mkdir(parents=True, exist_ok=True)
    for guest in guests:
        console = session.images / f"{guest}.img.console"
        if console.exists():
            shutil.copy(console, dest / console.name)
    return dest


def check_consoles(session: LibvirtSession, guests: list[str], test: str, expect) -> None:
    """Wait for the guests to power off, then `expect(guest, console_text)` for each."""
    import libvirt

    states = wait_shut_off(session, guests, timeout=240)
    try:
        for guest in guests:
            assert states[guest] == (libvirt.VIR_DOMAIN_SHUTOFF,
                                     libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN), \
                f"{guest} did not power itself off: (state, reason) {states[guest]}"
            console = (session.images / f"{guest}.img.console").read_text(errors="replace")
            expect(guest, console)
    except (AssertionError, OSError) as e:
        kept = keep_consoles(session, guests, test)
        print(f"console logs kept in {kept}", file=sys.stderr)
        raise AssertionError(f"{e}\n(console logs kept in {kept})") from None


def test_deployed_system_boots_and_powers_off(built, libvirt_host, tmp_path):
    net, checkout = built
    deploy(net, checkout, libvirt_host, tmp_path / "home", "clusters/kvm-boot.morph",
           "VERSION_LABEL=boot-test-1")

    def expect(guest: str, console: str) -> None:
        assert "distbuild-boot: booted kvm-boot-x86_64 boot-test-1\n" in console, console
        assert "no /etc/distbuild/distbuild.conf: not a distbuild node" in console
        assert "reboot: Power down" in console, console

    check_consoles(libvirt_host, ["kvm-boot"], "kvm-boot", expect)


NODES = ["distbuild-controller", "distbuild-worker0", "distbuild-worker1"]


def test_distbuild_network_cluster_nodes_boot_with_their_roles(built, libvirt_host, tmp_path):
    """The project's network cluster as it is, but for disk size and no network interface."""
    net, checkout = built
    proc = net.initiator(checkout, "systems/distbuild-system-x86_64.morph", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The kernel came from the trove's cache: the network built it once, for kvm-boot.
    assert net.component_log("controller").count("chunk:kvm-boot/linux started") == 1
    keys = tmp_path / "keys"
    keygen.generate(keys, ("distbuild-controller", [7878, 3434]), ("trove.lab", [2222]))
    admin = tmp_path / "admin.pub"
    admin.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAdmin admin\n")
    deploy(net, checkout, libvirt_host, tmp_path / "home", "clusters/distbuild-network-kvm.morph",
           "TROVE_HOST=trove.lab", f"DISTBUILD_KEYS={keys}", f"ADMIN_SSH_KEY={admin}",
           *(f"{node}.DISK_SIZE=128M" for node in NODES),
           *(f"{node}.NIC_CONFIG=" for node in NODES))

    def expect(guest: str, console: str) -> None:
        role = "controller" if guest == "distbuild-controller" else "worker"
        conf = "distbuild-boot: /etc/distbuild/distbuild.conf"
        assert "distbuild-boot: booted distbuild-system-x86_64 factory\n" in console, console
        assert f"{conf}: {role} section for {guest}\n" in console, console
        other = "worker" if role == "controller" else "controller"
        assert f"{conf}: {other} section" not in console, console
        roles = "controller yes, worker no" if role == "controller" else \
            "controller no, worker yes"
        assert f"distbuild-boot: role: {roles}\n" in console, console

    check_consoles(libvirt_host, NODES, "distbuild-network-kvm", expect)

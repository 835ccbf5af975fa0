"""The kvm extension: an ext4 image copied sparse over SSH, and a libvirt guest.  [edge]

Location `kvm+ssh://[USER@]HOST[:PORT]/GUEST/PATH`: PATH is the image's
absolute path on HOST. The image travels by SFTP (paramiko) with runs of
zero bytes skipped, so it stays sparse; the guest is defined and started
through libvirt at `qemu+ssh://[USER@]HOST/system`, or at LIBVIRT_URI.
Settings: DISK_SIZE, RAM_SIZE, VCPUS, ATTACH_DISKS (colon-separated paths
on HOST), NIC_CONFIG (space-separated `network=NAME` or `bridge=NAME`, each
with optional `,mac=...,model=...`), AUTOSTART, KERNEL_ARGS, INITRAMFS_PATH;
DOMAIN_TYPE (kvm or qemu; default kvm where the host offers it); SSH_IDENTITY
and SSH_KNOWN_HOSTS choose a key and a known_hosts file beside the usual ones.

The image is a bare ext4 filesystem with no bootloader, so when the system
has /boot/vmlinuz the guest boots it directly: the kernel (and initramfs)
are copied beside the image as PATH.vmlinuz and PATH.initramfs and named in
the domain, with `root=/dev/vda` on the kernel command line. The guest's serial console
is a pty (`virsh console`) whose output is also logged to PATH.console.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from pathlib import Path

from distbuild.deploy import libvirthost, remote, writeext
from distbuild.deploy.kvmguest import (
    DirectBoot,
    KvmLocation,
    KvmSettings,
    domain_xml,
    parse_location,
    read_settings,
)
from distbuild.deploy.writeext import ExtensionError

_KERNEL = "boot/vmlinuz"
_INITRAMFS = "boot/initramfs.gz"
_ROOT_ARGS = "root=/dev/vda rootfstype=ext4 rw console=ttyS0"


def check(location_text: str, env: Mapping[str, str]) -> None:
    """Refuse before anything is written: existing guest or image, missing disks or networks."""
    if writeext.get_boolean(env, "UPGRADE"):
        raise ExtensionError("upgrading a kvm guest is not supported; deploy a new guest")
    location = parse_location(location_text)
    settings = read_settings(env, location)
    conn = libvirthost.open_libvirt(settings.libvirt_uri)
    try:
        if settings.domain_type:
            libvirthost.require_domain_type(conn, settings.domain_type, settings.libvirt_uri)
        if libvirthost.guest_exists(conn, location.guest):
            raise ExtensionError(f"a guest named {location.guest} already exists on "
                                 f"{settings.libvirt_uri}")
        for nic in settings.nics:
            if nic.kind == "network" and not libvirthost.network_exists(conn, nic.source):
                raise ExtensionError(f"NIC_CONFIG: libvirt network {nic.source} does not "
                                     f"exist on {settings.libvirt_uri}")
    finally:
        conn.close()
    with _sftp(location, settings) as sftp:
        for path in (location.path, location.kernel_path, location.initramfs_path,
                     location.console_path):
            if remote.exists(sftp, path):
                raise ExtensionError(f"{path} already exists on {location.host}")
        folder = posixpath.dirname(location.path)
        if not remote.is_dir(sftp, folder):
            raise ExtensionError(f"directory {folder} does not exist on {location.host}")
        for disk in settings.attach_disks:
            if not remote.exists(sftp, disk):
                raise ExtensionError(f"ATTACH_DISKS: {disk} does not exist on {location.host}")


def write(rootfs: Path, location_text: str, env: Mapping[str, str]) -> None:
    """Make the image, copy it to the host, define and start the guest; undo all on failure."""
    location = parse_location(location_text)
    settings = read_settings(env, location)
    kernel, initramfs = boot_files(rootfs, settings)
    image = Path(env.get("TMPDIR") or "/tmp") / f"{location.guest}.img"
    size = settings.disk_size or writeext.default_disk_size(rootfs)
    writeext.status(f"Creating {size >> 20} MiB disk image")
    writeext.make_ext4_image(rootfs, image, size)
    try:
        with _sftp(location, settings) as sftp:
            created: list[str] = []
            try:
                boot = _copy_all(sftp, location, settings, image, kernel, initramfs, created)
                libvirthost.start_guest(
                    settings.libvirt_uri, location.guest,
                    lambda kind: domain_xml(location, settings, kind, boot), settings.autostart,
                    settings.domain_type)
            except BaseException:
                # The console log is QEMU's, made when the guest started.
                for path in [*created, location.console_path]:
                    if remote.exists(sftp, path):
                        remote.remove(sftp, path)
                raise
    finally:
        image.unlink(missing_ok=True)


def _copy_all(sftp, location: KvmLocation, settings: KvmSettings, image: Path,
              kernel: Path | None, initramfs: Path | None,
              created: list[str]) -> DirectBoot | None:
    """Copy image, kernel and initramfs to the host, noting each file made in `created`."""
    files = [(image, location.path)]
    files += [(kernel, location.kernel_path)] if kernel else []
    files += [(initramfs, location.initramfs_path)] if initramfs else []
    for _, path in files:
        if remote.exists(sftp, path):
            raise ExtensionError(f"{path} already exists on {location.host}")
    for local, path in files:
        writeext.status(f"Copying {local.name} to {location.host}:{path}")
        sent = remote.copy_sparse(sftp, local, path)
        created.append(path)
        if local == image:
            writeext.status(f"Sent {sent >> 20} MiB of {local.stat().st_size >> 20} MiB "
                            "(the rest is holes)")
    if kernel is None:
        writeext.status("The system has no /boot/vmlinuz: the guest boots from its disk")
        return None
    cmdline = " ".join(p for p in (_ROOT_ARGS, settings.kernel_args) if p)
    return DirectBoot(location.kernel_path,
                      location.initramfs_path if initramfs else None, cmdline)


def _sftp(location: KvmLocation, settings: KvmSettings):
    return remote.sftp_session(location.host, location.port, location.user,
                               settings.identity, settings.known_hosts)


def boot_files(rootfs: Path, settings: KvmSettings) -> tuple[Path | None, Path | None]:
    """The system's kernel and initramfs, if it has them (symlinks followed inside rootfs)."""
    kernel = _inside(rootfs, _KERNEL)
    initramfs = _inside(rootfs, settings.initramfs or _INITRAMFS)
    if settings.initramfs and initramfs is None:
        raise ExtensionError(f"INITRAMFS_PATH: /{settings.initramfs} is not in the system")
    return kernel, initramfs if kernel else None


def _inside(rootfs: Path, relative: str) -> Path | None:
    path = rootfs / relative
    for _ in range(8):  # a few levels of symlinks, each resolved against the rootfs
        if not path.is_symlink():
            break
        target = os.readlink(path)
        path = rootfs / target.lstrip("/") if target.startswith("/") else path.parent / target
    return path if path.is_file() else None

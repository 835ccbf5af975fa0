"""The kvm extension: an ext4 image copied sparse over SSH, and a libvirt guest.  [edge]

Location `kvm+ssh://[USER@]HOST[:PORT]/GUEST/PATH`: PATH is the image's
absolute path on HOST. The image travels by SFTP (paramiko) with runs of
zero bytes skipped, so it stays sparse; the guest is defined and started
through libvirt at `qemu+ssh://[USER@]HOST/system`, or at LIBVIRT_URI.
Settings: DISK_SIZE, RAM_SIZE, VCPUS, ATTACH_DISKS (colon-separated paths
on HOST), NIC_CONFIG (space-separated `network=NAME` or `bridge=NAME`, each
with optional `,mac=...,model=...`), AUTOSTART, KERNEL_ARGS, INITRAMFS_PATH;
SSH_IDENTITY and SSH_KNOWN_HOSTS choose a key and a known_hosts file beside
the usual ones.

The image is a bare ext4 filesystem with no bootloader, so when the system
has /boot/vmlinuz the guest boots it directly: the kernel (and initramfs)
are copied beside the image as PATH.vmlinuz and PATH.initramfs and named in
the domain, with `root=/dev/vda` on the kernel command line.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from distbuild.deploy import writeext
from distbuild.deploy.writeext import ExtensionError

_LOCATION = re.compile(
    r"^kvm\+ssh://(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^/:@]+)(?::(?P<port>\d+))?"
    r"/(?P<guest>[^/]+)(?P<path>/.+)$")
_BLOCK = 1 << 16
_ZERO = bytes(_BLOCK)
_DEFAULT_RAM = 1 << 30
_KERNEL = "boot/vmlinuz"
_INITRAMFS = "boot/initramfs.gz"
_ROOT_ARGS = "root=/dev/vda rootfstype=ext4 rw console=ttyS0"


@dataclass(frozen=True)
class KvmLocation:
    """Where the guest goes: SSH user, host and port, guest name, image path on the host."""

    user: str | None
    host: str
    port: int
    guest: str
    path: str

    @property
    def kernel_path(self) -> str:
        """Where the guest's kernel goes on the host, beside its image."""
        return f"{self.path}.vmlinuz"

    @property
    def initramfs_path(self) -> str:
        """Where the guest's initramfs goes on the host."""
        return f"{self.path}.initramfs"

    def libvirt_uri(self) -> str:
        """The host's system libvirt, reached over SSH."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port != 22 else ""
        return f"qemu+ssh://{user}{self.host}{port}/system"


@dataclass(frozen=True)
class Nic:
    """One network interface: a libvirt network or a host bridge."""

    kind: str
    source: str
    mac: str | None = None
    model: str = "virtio"


@dataclass(frozen=True)
class KvmSettings:
    """The guest's settings, read and checked from the extension's environment."""

    disk_size: int | None
    ram_size: int
    vcpus: int
    attach_disks: tuple[str, ...]
    nics: tuple[Nic, ...]
    autostart: bool
    libvirt_uri: str
    identity: str | None
    known_hosts: str | None
    kernel_args: str = ""
    initramfs: str | None = None


@dataclass(frozen=True)
class DirectBoot:
    """The kernel and initramfs on the host that the guest boots directly."""

    kernel: str
    initramfs: str | None
    cmdline: str


def parse_location(location: str) -> KvmLocation:
    """Split a kvm+ssh:// location; anything else is an error showing the expected form."""
    match = _LOCATION.match(location)
    if not match:
        raise ExtensionError(f"location {location!r} is not "
                             "kvm+ssh://[USER@]HOST[:PORT]/GUEST/PATH")
    host = match["host"].strip("[]")
    return KvmLocation(match["user"], host, int(match["port"] or 22), match["guest"],
                       posixpath.normpath(match["path"]))


def read_settings(env: Mapping[str, str], location: KvmLocation) -> KvmSettings:
    """Every setting the kvm extension reads, checked before anything is done."""
    vcpus = env.get("VCPUS", "1").strip()
    if not vcpus.isdigit() or int(vcpus) < 1:
        raise ExtensionError(f"VCPUS must be a whole number of at least 1, not {vcpus!r}")
    disks = tuple(d for d in env.get("ATTACH_DISKS", "").split(":") if d.strip())
    for disk in disks:
        if not disk.startswith("/"):
            raise ExtensionError(f"ATTACH_DISKS: {disk!r} is not an absolute path on the host")
    return KvmSettings(
        disk_size=writeext.get_size(env, "DISK_SIZE"),
        ram_size=writeext.get_size(env, "RAM_SIZE", _DEFAULT_RAM) or _DEFAULT_RAM,
        vcpus=int(vcpus),
        attach_disks=disks,
        nics=tuple(_parse_nic(n) for n in env.get("NIC_CONFIG", "").split()),
        autostart=writeext.get_boolean(env, "AUTOSTART"),
        libvirt_uri=env.get("LIBVIRT_URI") or location.libvirt_uri(),
        identity=env.get("SSH_IDENTITY") or None,
        known_hosts=env.get("SSH_KNOWN_HOSTS") or None,
        kernel_args=env.get("KERNEL_ARGS", "").strip(),
        initramfs=(env.get("INITRAMFS_PATH") or "").strip().lstrip("/") or None,
    )


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


def _parse_nic(text: str) -> Nic:
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq or not value:
            raise ExtensionError(f"NIC_CONFIG: {text!r}: expected KEY=VALUE, not {part!r}")
        fields[key] = value
    kinds = [k for k in ("network", "bridge") if k in fields]
    unknown = set(fields) - {"network", "bridge", "mac", "model"}
    if len(kinds) != 1 or unknown:
        raise ExtensionError(f"NIC_CONFIG: {text!r} needs exactly one of network=NAME or "
                             "bridge=NAME, and may add mac= and model=")
    return Nic(kinds[0], fields[kinds[0]], fields.get("mac"), fields.get("model", "virtio"))


def domain_xml(location: KvmLocation, settings: KvmSettings, domain_type: str,
               boot: DirectBoot | None = None) -> str:
    """The libvirt domain for the guest: its image as vda, attached disks after it."""
    disks = [_disk_xml(location.path, "vda")]
    disks += [_disk_xml(path, f"vd{chr(ord('b') + i)}")
              for i, path in enumerate(settings.attach_disks)]
    nics = [_nic_xml(nic) for nic in settings.nics]
    return "\n".join([
        f"<domain type={quoteattr(domain_type)}>",
        f"  <name>{_text(location.guest)}</name>",
        f"  <memory unit='KiB'>{settings.ram_size // 1024}</memory>",
        f"  <vcpu>{settings.vcpus}</vcpu>",
        _os_xml(boot),
        "  <features><acpi/><apic/></features>",
        "  <devices>",
        *disks, *nics,
        "    <serial type='pty'/><console type='pty'/>",
        "  </devices>",
        "</domain>",
    ])


def _os_xml(boot: DirectBoot | None) -> str:
    if boot is None:
        return "  <os><type>hvm</type><boot dev='hd'/></os>"
    initrd = f"<initrd>{_text(boot.initramfs)}</initrd>" if boot.initramfs else ""
    return (f"  <os><type>hvm</type><kernel>{_text(boot.kernel)}</kernel>{initrd}"
            f"<cmdline>{_text(boot.cmdline)}</cmdline></os>")


def _disk_xml(path: str, target: str) -> str:
    # Block devices (LVM volumes, as the distbuild guide uses) need type='block'.
    kind, attr = ("block", "dev") if path.startswith("/dev/") else ("file", "file")
    return (f"    <disk type='{kind}' device='disk'><driver name='qemu' type='raw'/>"
            f"<source {attr}={quoteattr(path)}/><target dev='{target}' bus='virtio'/></disk>")


def _nic_xml(nic: Nic) -> str:
    mac = f"<mac address={quoteattr(nic.mac)}/>" if nic.mac else ""
    return (f"    <interface type='{nic.kind}'>{mac}<source {nic.kind}={quoteattr(nic.source)}/>"
            f"<model type={quoteattr(nic.model)}/></interface>")


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- SSH ----------------------------------------------------------------------

@contextmanager
def sftp_session(location: KvmLocation, settings: KvmSettings) -> Iterator:
    """An SFTP session to the VM host; its host key must already be known."""
    import paramiko

    client = paramiko.SSHClient()
    try:
        client.load_system_host_keys()
        if settings.known_hosts:
            client.load_host_keys(os.path.expanduser(settings.known_hosts))
    except OSError as e:
        raise ExtensionError(f"cannot read known_hosts: {e}") from None
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(location.host, port=location.port, username=location.user,
                       key_filename=settings.identity, timeout=30, banner_timeout=30,
                       auth_timeout=30)
    except paramiko.SSHException as e:
        client.close()
        if "not found in known_hosts" in str(e):
            raise ExtensionError(f"the host key of {location.host} is not known; check it and "
                                 "add it to ~/.ssh/known_hosts (or SSH_KNOWN_HOSTS)") from None
        raise ExtensionError(f"SSH to {location.host}:{location.port} failed: {e}") from None
    except OSError as e:
        client.close()
        raise ExtensionError(f"cannot connect to {location.host}:{location.port}: "
                             f"{e.strerror or e}") from None
    try:
        sftp = client.open_sftp()
        try:
            yield sftp
        finally:
            sftp.close()
    finally:
        client.close()


def remote_exists(sftp, path: str) -> bool:
    """Whether `path` exists on the host (a dangling symlink counts)."""
    try:
        sftp.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise ExtensionError(f"cannot look at {path} on the host: {e}") from None
    return True


def copy_sparse(sftp, local: Path, remote: str) -> int:
    """Copy `local` to new file `remote` writing only blocks that hold data; returns bytes sent.

    Holes are found with SEEK_DATA/SEEK_HOLE where the filesystem has them,
    and blocks of zeros inside data are skipped too; a final truncate gives
    the file its full size, so the host's filesystem keeps the holes. The
    file is created exclusively, and removed again if the copy fails.
    """
    size = local.stat().st_size
    try:
        dst = sftp.open(remote, "wx")
    except OSError as e:
        raise ExtensionError(f"cannot create {remote} on the host (does it exist?): {e}") \
            from None
    try:
        with open(local, "rb") as src, dst:
            dst.set_pipelined(True)
            sent = _copy_extents(src, dst, size)
            dst.truncate(size)
    except BaseException:
        _remove_remote(sftp, remote)
        raise
    return sent


def _copy_extents(src, dst, size: int) -> int:
    sent = 0
    for start, end in _data_extents(src.fileno(), size):
        src.seek(start)
        offset = start
        while offset < end:
            block = src.read(min(_BLOCK, end - offset))
            if block != _ZERO[:len(block)]:
                dst.seek(offset)
                dst.write(block)
                sent += len(block)
            offset += len(block)
    return sent


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    if not hasattr(os, "SEEK_DATA"):
        yield 0, size
        return
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        offset = end


# --- libvirt ------------------------------------------------------------------

def open_libvirt(uri: str):
    """A libvirt connection, with libvirt's own stderr printing silenced."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise ExtensionError(f"cannot connect to libvirt at {uri}: {e}") from None


def guest_exists(conn, name: str) -> bool:
    """Whether the host already has a guest (running or not) named `name`."""
    import libvirt

    try:
        conn.lookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise ExtensionError(f"cannot look up guest {name}: {e}") from None
    return True


def domain_type(conn) -> str:
    """`kvm` where the host offers it, else the first type it offers (`test`, `qemu`)."""
    types = re.findall(r"<domain type='([^']+)'", conn.getCapabilities())
    if not types:
        raise ExtensionError("the libvirt host offers no guest domain types")
    return "kvm" if "kvm" in types else types[0]


# --- check and write ----------------------------------------------------------

def check(location_text: str, env: Mapping[str, str]) -> None:
    """Refuse before anything is written: existing guest or image, missing disks or networks."""
    if writeext.get_boolean(env, "UPGRADE"):
        raise ExtensionError("upgrading a kvm guest is not supported; deploy a new guest")
    location = parse_location(location_text)
    settings = read_settings(env, location)
    conn = open_libvirt(settings.libvirt_uri)
    try:
        if guest_exists(conn, location.guest):
            raise ExtensionError(f"a guest named {location.guest} already exists on "
                                 f"{settings.libvirt_uri}")
        for nic in settings.nics:
            if nic.kind == "network" and not _network_exists(conn, nic.source):
                raise ExtensionError(f"NIC_CONFIG: libvirt network {nic.source} does not "
                                     f"exist on {settings.libvirt_uri}")
    finally:
        conn.close()
    with sftp_session(location, settings) as sftp:
        for path in (location.path, location.kernel_path, location.initramfs_path):
            if remote_exists(sftp, path):
                raise ExtensionError(f"{path} already exists on {location.host}")
        folder = posixpath.dirname(location.path)
        if not _is_dir(sftp, folder):
            raise ExtensionError(f"directory {folder} does not exist on {location.host}")
        for disk in settings.attach_disks:
            if not remote_exists(sftp, disk):
                raise ExtensionError(f"ATTACH_DISKS: {disk} does not exist on {location.host}")


def _network_exists(conn, name: str) -> bool:
    import libvirt

    try:
        conn.networkLookupByName(name)
    except libvirt.libvirtError:
        return False
    return True


def _is_dir(sftp, path: str) -> bool:
    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode)
    except FileNotFoundError:
        return False


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
        with sftp_session(location, settings) as sftp:
            created: list[str] = []
            try:
                boot = _copy_all(sftp, location, settings, image, kernel, initramfs, created)
                _start_guest(location, settings, boot)
            except BaseException:
                for path in created:
                    _remove_remote(sftp, path)
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
    for _, remote in files:
        if remote_exists(sftp, remote):
            raise ExtensionError(f"{remote} already exists on {location.host}")
    for local, remote in files:
        writeext.status(f"Copying {local.name} to {location.host}:{remote}")
        sent = copy_sparse(sftp, local, remote)
        created.append(remote)
        if local == image:
            writeext.status(f"Sent {sent >> 20} MiB of {local.stat().st_size >> 20} MiB "
                            "(the rest is holes)")
    if kernel is None:
        writeext.status("The system has no /boot/vmlinuz: the guest boots from its disk")
        return None
    cmdline = " ".join(p for p in (_ROOT_ARGS, settings.kernel_args) if p)
    return DirectBoot(location.kernel_path,
                      location.initramfs_path if initramfs else None, cmdline)


def _start_guest(location: KvmLocation, settings: KvmSettings,
                 boot: DirectBoot | None) -> None:
    import libvirt

    conn = open_libvirt(settings.libvirt_uri)
    domain = None
    try:
        xml = domain_xml(location, settings, domain_type(conn), boot)
        writeext.status(f"Defining guest {location.guest} on {settings.libvirt_uri}")
        domain = conn.defineXML(xml)
        if settings.autostart:
            domain.setAutostart(1)
        domain.create()
        writeext.status(f"Started guest {location.guest}")
    except libvirt.libvirtError as e:
        _undefine(domain)
        raise ExtensionError(f"libvirt refused guest {location.guest}: "
                             f"{e.get_error_message()}") from None
    except BaseException:
        _undefine(domain)
        raise
    finally:
        conn.close()


def _undefine(domain) -> None:
    import libvirt

    if domain is None:
        return
    try:
        if domain.isActive():
            domain.destroy()
        domain.undefine()
    except libvirt.libvirtError:
        pass


def _remove_remote(sftp, path: str) -> None:
    try:
        sftp.remove(path)
    except OSError:
        pass

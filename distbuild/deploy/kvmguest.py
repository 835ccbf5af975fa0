"""A KVM guest described: its location, settings and libvirt domain XML.  [core]

Plain data from the extension's environment; nothing here touches the
network or the disk.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from distbuild.deploy import writeext
from distbuild.deploy.writeext import ExtensionError

_LOCATION = re.compile(
    r"^kvm\+ssh://(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^/:@]+)(?::(?P<port>\d+))?"
    r"/(?P<guest>[^/]+)(?P<path>/.+)$")
_DEFAULT_RAM = 1 << 30
# kvm: hardware virtualisation; qemu: QEMU's own emulation (TCG), slower but
# boots where KVM cannot run the guest's kernel.
DOMAIN_TYPES = ("kvm", "qemu")


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

    @property
    def console_path(self) -> str:
        """Where everything the guest writes to its serial console is logged on the host."""
        return f"{self.path}.console"

    def libvirt_uri(self) -> str:
        """The host's system libvirt, reached over SSH."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port != 22 else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"qemu+ssh://{user}{host}{port}/system"


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
    domain_type: str | None = None


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
                       "/" + posixpath.normpath(match["path"]).lstrip("/"))


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
        domain_type=_domain_type(env),
    )


def _domain_type(env: Mapping[str, str]) -> str | None:
    value = env.get("DOMAIN_TYPE", "").strip()
    if value and value not in DOMAIN_TYPES:
        raise ExtensionError(f"DOMAIN_TYPE must be one of {', '.join(DOMAIN_TYPES)}, "
                             f"not {value!r}")
    return value or None


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
        # A pty for `virsh console`, and a log of all it says for whoever was not attached.
        f"    <serial type='pty'><log file={quoteattr(location.console_path)} append='off'/>"
        "</serial>",
        "    <console type='pty'/>",
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

"""The libvirt host: guests looked up, defined, started and undone.  [edge]"""

from __future__ import annotations

import re
from collections.abc import Callable

from distbuild.deploy import writeext
from distbuild.deploy.writeext import ExtensionError


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


def domain_types(conn) -> list[str]:
    """The guest domain types the host offers (`kvm`, `qemu`, `test`)."""
    return list(dict.fromkeys(re.findall(r"<domain type='([^']+)'", conn.getCapabilities())))


def domain_type(conn) -> str:
    """`kvm` where the host offers it, else the first type it offers (`test`, `qemu`)."""
    types = domain_types(conn)
    if not types:
        raise ExtensionError("the libvirt host offers no guest domain types")
    return "kvm" if "kvm" in types else types[0]


def require_domain_type(conn, wanted: str, uri: str) -> None:
    """Refuse a DOMAIN_TYPE the host does not offer, naming the ones it does."""
    offered = domain_types(conn)
    if wanted not in offered:
        raise ExtensionError(f"DOMAIN_TYPE: {uri} offers no {wanted} guests (it offers "
                             f"{', '.join(offered) or 'none'})")


def network_exists(conn, name: str) -> bool:
    """Whether libvirt network `name` is defined on the host."""
    import libvirt

    try:
        conn.networkLookupByName(name)
    except libvirt.libvirtError:
        return False
    return True


def start_guest(uri: str, name: str, xml_for_type: Callable[[str], str],
                autostart: bool, wanted_type: str | None = None) -> None:
    """Define and start guest `name` from the XML for `wanted_type` or the host's best type.

    Undone (destroyed and undefined) on failure.
    """
    import libvirt

    conn = open_libvirt(uri)
    domain = None
    try:
        if wanted_type:
            require_domain_type(conn, wanted_type, uri)
        xml = xml_for_type(wanted_type or domain_type(conn))
        writeext.status(f"Defining guest {name} on {uri}")
        domain = conn.defineXML(xml)
        if autostart:
            domain.setAutostart(1)
        domain.create()
        writeext.status(f"Started guest {name}")
    except libvirt.libvirtError as e:
        _undefine(domain)
        raise ExtensionError(f"libvirt refused guest {name}: "
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

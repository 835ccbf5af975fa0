"""The KVM guest description: locations, settings and domain XML (no host needed)."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from distbuild.deploy.kvmguest import DirectBoot, domain_xml, parse_location, read_settings
from distbuild.deploy.writeext import ExtensionError


@pytest.mark.parametrize("text, user, host, port, guest, path, uri", [
    ("kvm+ssh://user@vmhost/g/vm/g.img", "user", "vmhost", 22, "g", "/vm/g.img",
     "qemu+ssh://user@vmhost/system"),
    ("kvm+ssh://vmhost:2200/g//vm/./g.img", None, "vmhost", 2200, "g", "/vm/g.img",
     "qemu+ssh://vmhost:2200/system"),
    ("kvm+ssh://me@[::1]:2222/g/g.img", "me", "::1", 2222, "g", "/g.img",
     "qemu+ssh://me@[::1]:2222/system"),
])
def test_locations(text, user, host, port, guest, path, uri):
    loc = parse_location(text)
    assert (loc.user, loc.host, loc.port, loc.guest, loc.path) == (user, host, port, guest, path)
    assert loc.kernel_path == f"{path}.vmlinuz"
    assert loc.libvirt_uri() == uri


@pytest.mark.parametrize("text", ["kvm://h/g/p.img", "kvm+ssh://h/g", "kvm+ssh://h//p.img",
                                  "kvm+ssh:///g/p.img", "vmhost/g/p.img"])
def test_bad_locations(text):
    with pytest.raises(ExtensionError, match=r"is not kvm\+ssh://\[USER@\]HOST\[:PORT\]"):
        parse_location(text)


def test_domain_xml_is_what_the_settings_say():
    loc = parse_location("kvm+ssh://u@h/web&co/vm/web.img")
    settings = read_settings({"RAM_SIZE": "512M", "VCPUS": "3", "AUTOSTART": "yes",
                              "ATTACH_DISKS": "/dev/vg/a:/srv/b.img",
                              "NIC_CONFIG": "bridge=br0,model=e1000"}, loc)
    boot = DirectBoot("/vm/web.img.vmlinuz", None, "root=/dev/vda")
    xml = ElementTree.fromstring(domain_xml(loc, settings, "kvm", boot))
    assert xml.get("type") == "kvm" and xml.findtext("name") == "web&co"
    assert xml.find("memory").text == str(512 * 1024) and xml.find("memory").get("unit") == "KiB"
    assert xml.findtext("vcpu") == "3"
    assert xml.findtext("os/kernel") == "/vm/web.img.vmlinuz" and xml.find("os/initrd") is None
    disks = [(d.get("type"), d.find("target").get("dev")) for d in xml.iter("disk")]
    assert disks == [("file", "vda"), ("block", "vdb"), ("file", "vdc")]
    nic = xml.find("devices/interface")
    assert (nic.get("type"), nic.find("source").get("bridge"),
            nic.find("model").get("type")) == ("bridge", "br0", "e1000")
    assert settings.autostart is True
    assert settings.libvirt_uri == "qemu+ssh://u@h/system"


@pytest.mark.parametrize("env, message", [
    ({"VCPUS": "0"}, "VCPUS must be a whole number of at least 1"),
    ({"ATTACH_DISKS": "relative.img"}, "is not an absolute path on the host"),
    ({"NIC_CONFIG": "network=a,bridge=b"}, "needs exactly one of network=NAME or bridge=NAME"),
    ({"NIC_CONFIG": "network"}, "expected KEY=VALUE"),
    ({"AUTOSTART": "sometimes"}, "AUTOSTART must be yes or no"),
    ({"DISK_SIZE": "4X"}, "DISK_SIZE must be a size"),
])
def test_bad_settings(env, message):
    with pytest.raises(ExtensionError, match=message):
        read_settings(env, parse_location("kvm+ssh://h/g/g.img"))


def test_libvirt_uri_setting_wins():
    settings = read_settings({"LIBVIRT_URI": "qemu:///system"},
                             parse_location("kvm+ssh://h/g/g.img"))
    assert settings.libvirt_uri == "qemu:///system"

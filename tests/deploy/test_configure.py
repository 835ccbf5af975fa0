"""Configure extensions, each run as its own process by the extension runner."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from distbuild import config, keygen
from distbuild.controller.service import ControllerSettings
from distbuild.deploy.extensions import ExtensionFailed, require_extension, run_extension
from distbuild.worker.service import WorkerConfig
from tests.conftest import MORPHS


def configure(name: str, rootfs: Path, settings: dict[str, str], cwd: Path) -> list[str]:
    lines: list[str] = []
    ext = require_extension(name, "configure", MORPHS, "test")
    base = {k: v for k, v in os.environ.items() if k != "HOSTNAME"}
    run_extension(ext, [str(rootfs)], settings, cwd=cwd, progress=lines.append,
                  where="test", base_environ=base)
    return lines


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = (os.readlink(path) if path.is_symlink()
                   else path.read_bytes() if path.is_file() else b"")
        out[str(path.relative_to(root))] = (st.st_mode, content)
    return out


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                         "builder:x:1000:1000::/home/builder:/bin/sh\n")
    (root / "etc" / "motd").write_text("old\n")
    return root


def test_set_hostname(rootfs, tmp_path):
    configure("set-hostname", rootfs, {"HOSTNAME": "node-1"}, tmp_path)
    assert (rootfs / "etc" / "hostname").read_text() == "node-1\n"


def write_manifest(folder: Path, lines: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest").write_text(lines)
    return folder / "manifest"


def test_install_files(rootfs, tmp_path):
    files = tmp_path / "defs" / "install-files" / "net"
    (files / "etc" / "ssh").mkdir(parents=True)
    (files / "etc" / "ssh" / "sshd_config").write_text("PermitRootLogin no\n")
    (files / "etc" / "motd").write_text("new\n")
    os.symlink("ssh/sshd_config", files / "etc" / "sshd-link")
    write_manifest(files, "# Baserock's manifest format\n"
                          "0040755 0 0 /etc/ssh\n"
                          "0100600 0 0 /etc/ssh/sshd_config\n"
                          "overwrite 0100644 0 0 /etc/motd\n"
                          "0120777 0 0 /etc/sshd-link\n")
    lines = configure("install-files", rootfs,
                      {"INSTALL_FILES": "install-files/net/manifest"}, tmp_path / "defs")
    config_file = rootfs / "etc" / "ssh" / "sshd_config"
    assert config_file.read_text() == "PermitRootLogin no\n"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert (rootfs / "etc" / "motd").read_text() == "new\n"
    assert os.readlink(rootfs / "etc" / "sshd-link") == "ssh/sshd_config"
    assert "[install-files.configure] Installed /etc/ssh/sshd_config" in lines


@pytest.mark.parametrize("manifest, message", [
    ("0100644 0 0 /etc/motd\n", r"manifest:1: /etc/motd already exists in the system"),
    ("0100644 0 0 /etc/new\n0100644 0 0 /etc/missing\n",
     r"manifest:2: .*/etc/missing does not exist"),
    ("0100644 0 /etc/new\n", r"manifest:1: expected '\[overwrite\] MODE UID GID PATH'"),
    ("0060644 0 0 /etc/new\n", "mode 60644 is not a file, directory or symlink"),
    ("0120777 0 0 /etc/new\n", r"/etc/new is not a symlink"),
])
def test_install_files_refuses_and_installs_nothing(rootfs, tmp_path, manifest, message):
    files = tmp_path / "files"
    (files / "etc").mkdir(parents=True)
    (files / "etc" / "new").write_text("x\n")
    (files / "etc" / "motd").write_text("x\n")
    write_manifest(files, manifest)
    before = snapshot(rootfs)
    with pytest.raises(ExtensionFailed, match=message):
        configure("install-files", rootfs, {"INSTALL_FILES": str(files / "manifest")},
                  tmp_path)
    assert snapshot(rootfs) == before


KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyA alice@example"
KEY_B = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYKeyB bob@example"


def test_ssh_authorized_keys(rootfs, tmp_path):
    (tmp_path / "alice.pub").write_text(KEY_A + "\n")
    (tmp_path / "bob.pub").write_text(KEY_B + "\n")
    settings = {"SSH_AUTHORIZED_KEYS": "alice.pub bob.pub"}
    configure("ssh-authorized-keys", rootfs, settings, tmp_path)
    configure("ssh-authorized-keys", rootfs, settings, tmp_path)
    authorized = rootfs / "root" / ".ssh" / "authorized_keys"
    assert authorized.read_text() == f"{KEY_A}\n{KEY_B}\n"
    assert stat.S_IMODE(authorized.stat().st_mode) == 0o600
    assert stat.S_IMODE(authorized.parent.stat().st_mode) == 0o700

    configure("ssh-authorized-keys", rootfs,
              {**settings, "SSH_AUTHORIZED_USER": "builder"}, tmp_path)
    theirs = rootfs / "home" / "builder" / ".ssh" / "authorized_keys"
    assert theirs.read_text() == f"{KEY_A}\n{KEY_B}\n"
    assert theirs.stat().st_uid == (1000 if os.geteuid() == 0 else os.geteuid())


def test_ssh_authorized_keys_refuses_a_private_key(rootfs, tmp_path):
    (tmp_path / "oops").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n")
    with pytest.raises(ExtensionFailed, match="oops is not an SSH public key"):
        configure("ssh-authorized-keys", rootfs, {"SSH_AUTHORIZED_KEYS": "oops"}, tmp_path)
    assert not (rootfs / "root").exists()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A network's key set, as `distbuild keygen` writes it."""
    folder = tmp_path / "keys"
    keygen.generate(folder, ("controller.lab", [7878, 3434]), ("trove.lab", [2222]))
    return folder


NETWORK = {"TROVE_HOST": "trove.lab", "TROVE_ID": "lab", "CONTROLLERHOST": "controller.lab",
           "DISTBUILD_KEYS": "keys"}


def load_conf(rootfs: Path) -> dict:
    return config.load(rootfs / "etc" / "distbuild" / "distbuild.conf")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_distbuild_configure_controller(rootfs, tmp_path, keys):
    configure("distbuild", rootfs, {**NETWORK, "DISTBUILD_CONTROLLER": "True",
                                    "DISTBUILD_WORKER": "False", "HOSTNAME": "controller.lab",
                                    "WORKERS": "worker0.lab, worker1.lab"}, tmp_path)
    conf = load_conf(rootfs)
    assert conf["distbuild_controller"] is True and conf["distbuild_worker"] is False
    assert conf["workers"] == ["worker0.lab", "worker1.lab"]
    assert conf["trove_host"] == "trove.lab" and conf["trove_id"] == "lab"
    assert conf["artifact_cache_server"] == "trove.lab"
    assert conf["artifact_cache_url"] == "http://trove.lab:8080/"
    assert "worker" not in conf
    # The section the real controller reads, checked by the controller's own loader.
    settings = config.section(ControllerSettings, conf["controller"], "controller")
    assert settings.allowed_workers == ["worker0.lab", "worker1.lab"]
    assert settings.trove_git_url == "git://trove.lab"
    etc = rootfs / "etc" / "distbuild"
    assert (etc / "controller_host_key").read_bytes() == \
        (keys / "controller_host_key").read_bytes()
    assert settings.host_key == Path("/etc/distbuild/controller_host_key")
    assert mode_of(etc / "controller_host_key") == 0o600
    assert mode_of(etc / "token_secret") == 0o600
    assert mode_of(etc / "worker.key") == 0o600
    assert mode_of(etc / "worker_authorized_keys") == 0o644
    units = rootfs / "etc" / "systemd" / "system"
    wants = units / "multi-user.target.wants"
    assert os.readlink(wants / "distbuild-controller.service") == \
        "/etc/systemd/system/distbuild-controller.service"
    assert "ExecStart=/usr/bin/distbuild controller" in \
        (units / "distbuild-controller.service").read_text()
    assert not (wants / "distbuild-worker.service").exists()


def test_distbuild_configure_worker(rootfs, tmp_path, keys):
    configure("distbuild", rootfs, {**NETWORK, "DISTBUILD_WORKER": "yes",
                                    "HOSTNAME": "worker0.lab",
                                    "ARTIFACT_CACHE_SERVER": "cache.lab"}, tmp_path)
    conf = load_conf(rootfs)
    assert conf["controller_initiator_address"] == "controller.lab"
    assert conf["artifact_cache_url"] == "http://cache.lab:8080/"
    assert "controller" not in conf
    worker = config.section(WorkerConfig, conf["worker"], "worker")
    assert (worker.name, worker.controller_address) == ("worker0.lab", "controller.lab")
    etc = rootfs / "etc" / "distbuild"
    assert (etc / "worker.key").read_bytes() == (keys / "worker_key").read_bytes()
    assert mode_of(etc / "worker.key") == 0o600
    assert (etc / "known_hosts").read_text() == (keys / "known_hosts").read_text()
    assert not (etc / "token_secret").exists(), "a worker needs no token secret"
    wants = rootfs / "etc" / "systemd" / "system" / "multi-user.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == ["distbuild-worker.service"]


def test_distbuild_configure_worker_key_setting(rootfs, tmp_path, keys):
    (tmp_path / "own.key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nown\n")
    (tmp_path / "own.key.pub").write_text(KEY_A + "\n")
    configure("distbuild", rootfs, {**NETWORK, "DISTBUILD_WORKER": "yes", "HOSTNAME": "w",
                                    "WORKER_SSH_KEY": "own.key"}, tmp_path)
    etc = rootfs / "etc" / "distbuild"
    assert (etc / "worker.key").read_text().endswith("own\n")
    assert mode_of(etc / "worker.key.pub") == 0o644


@pytest.mark.parametrize("drop, extra, message", [
    ("CONTROLLERHOST", {"DISTBUILD_WORKER": "yes"}, "CONTROLLERHOST is not set; a worker"),
    ("TROVE_HOST", {"DISTBUILD_WORKER": "yes"}, "TROVE_HOST is not set"),
    ("DISTBUILD_KEYS", {"DISTBUILD_WORKER": "yes"}, "DISTBUILD_KEYS is not set"),
    (None, {"DISTBUILD_CONTROLLER": "yes"}, "WORKERS is not set"),
    (None, {"DISTBUILD_WORKER": "maybe"}, "DISTBUILD_WORKER must be yes or no"),
    (None, {"DISTBUILD_WORKER": "yes", "WORKER_SSH_KEY": "nope.key"},
     "WORKER_SSH_KEY: nope.key is not a file"),
    (None, {"DISTBUILD_WORKER": "yes", "DISTBUILD_KEYS": "nokeys"},
     "DISTBUILD_KEYS: nokeys/known_hosts is not a file"),
])
def test_distbuild_configure_refuses(rootfs, tmp_path, keys, drop, extra, message):
    settings = {k: v for k, v in {**NETWORK, "HOSTNAME": "n"}.items() if k != drop}
    before = snapshot(rootfs)
    with pytest.raises(ExtensionFailed, match=message):
        configure("distbuild", rootfs, {**settings, **extra}, tmp_path)
    assert snapshot(rootfs) == before


def test_distbuild_configure_leaves_other_systems_alone(rootfs, tmp_path):
    before = snapshot(rootfs)
    lines = configure("distbuild", rootfs, {"DISTBUILD_WORKER": "False"}, tmp_path)
    assert snapshot(rootfs) == before
    assert any("nothing to do" in line for line in lines)


def test_fstab(rootfs, tmp_path):
    (rootfs / "etc" / "fstab").write_text("proc /proc proc defaults 0 0\n")
    settings = {"FSTAB_SRC": "LABEL=src /srv/distbuild auto defaults,nofail 0 2",
                "FSTAB_HOMES": "no", "FSTAB_PROC": "proc /proc proc defaults 0 0"}
    configure("fstab", rootfs, settings, tmp_path)
    configure("fstab", rootfs, settings, tmp_path)
    assert (rootfs / "etc" / "fstab").read_text() == (
        "proc /proc proc defaults 0 0\nLABEL=src /srv/distbuild auto defaults,nofail 0 2\n")


def test_fstab_refuses_a_short_line(rootfs, tmp_path):
    with pytest.raises(ExtensionFailed, match="fstab line '/dev/vdb /srv' needs at least"):
        configure("fstab", rootfs, {"FSTAB_SRC": "/dev/vdb /srv"}, tmp_path)
    assert not (rootfs / "etc" / "fstab").exists()


def test_version_label_names_the_system_and_its_version(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "baserock").mkdir()
    (root / "baserock" / "kvm-boot-x86_64.meta").write_text(
        '{"format": "distbuild-system/1", "system": "kvm-boot-x86_64"}')
    (root / "etc" / "os-release").write_text('NAME="x"\nIMAGE_VERSION=old\n')
    lines = configure("version-label", root, {"VERSION_LABEL": "v2.1"}, tmp_path)
    assert lines == ["[version-label.configure] kvm-boot-x86_64 version v2.1"]
    assert (root / "etc" / "os-release").read_text() == \
        'NAME="x"\nIMAGE_ID=kvm-boot-x86_64\nIMAGE_VERSION=v2.1\n'
    configure("version-label", root, {}, tmp_path)
    assert (root / "etc" / "os-release").read_text().endswith("IMAGE_VERSION=factory\n")


@pytest.mark.parametrize("label, meta, message", [
    ("bad label", True, "VERSION_LABEL 'bad label' may hold only"),
    ("v1", False, "holds no system metadata"),
])
def test_version_label_refuses_and_writes_nothing(tmp_path, label, meta, message):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "baserock").mkdir()
    if meta:
        (root / "baserock" / "s.meta").write_text('{"format": "distbuild-system/1", "system": "s"}')
    (root / "etc" / "os-release").write_text("NAME=x\n")
    with pytest.raises(ExtensionFailed, match=message):
        configure("version-label", root, {"VERSION_LABEL": label}, tmp_path)
    assert (root / "etc" / "os-release").read_text() == "NAME=x\n"

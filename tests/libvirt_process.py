"""A libvirt daemon of the tests' own: libvirtd in session mode, as an unprivileged user.

As root, `qemu:///session` means the system daemon, which the tests must not
touch (and which is not installed here). So the daemon runs as `nobody`
(with the `kvm` group, for /dev/kvm), with its sockets, configuration and
state under a folder of its own; the tests reach it through
`qemu:///session?socket=...`. Its qemu.conf has QEMU write logs itself, so
no virtlogd is started behind the tests' back. It defines no networks.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.network_process import processes_with
from tests.trove_process import pid_alive, terminate, wait_gone, wait_started

USER = "nobody"


class LibvirtSession:
    """`libvirtd` as `nobody`, its files under `root`; `uri` reaches it as root."""

    def __init__(self) -> None:
        # Under /tmp, not pytest's 0700 folder: QEMU runs as nobody and opens the images.
        self.root = Path(tempfile.mkdtemp(prefix="distbuild-libvirt-"))
        self.root.chmod(0o755)
        user = pwd.getpwnam(USER)
        self.owner = (user.pw_uid, user.pw_gid)
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "libvirtd.log"
        self.images = self.root / "images"

    @property
    def socket(self) -> Path:
        return self.root / "run" / "libvirt" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///session?socket={self.socket}"

    def start(self, timeout: float = 30) -> LibvirtSession:
        for d in ("run", "config/libvirt", "cache", "home", "images"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "run").chmod(0o700)
        (self.root / "config" / "libvirt" / "qemu.conf").write_text('stdio_handler = "file"\n')
        for path in [self.root / d for d in ("run", "config", "cache", "home", "images")]:
            for sub in [path, *path.rglob("*")]:
                os.chown(sub, *self.owner)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.root / "home"),
               "XDG_RUNTIME_DIR": str(self.root / "run"),
               "XDG_CONFIG_HOME": str(self.root / "config"),
               "XDG_CACHE_HOME": str(self.root / "cache"), "LC_ALL": "C"}
        kvm = grp.getgrnam("kvm").gr_gid if _has_group("kvm") else self.owner[1]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["setpriv", f"--reuid={self.owner[0]}", f"--regid={self.owner[1]}",
                 f"--groups={kvm}", "libvirtd"], env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        wait_started(self.proc, self.socket, timeout, self.stop,
                     lambda: f"libvirtd did not start:\n{self.log.read_text()}")
        return self

    def qemu_pids(self) -> list[int]:
        """QEMU processes of this daemon's guests (libvirt detaches them, so by command line)."""
        found = []
        for pid in processes_with(str(self.root)):
            try:
                if b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass  # gone already
        return found

    def stop(self) -> None:
        """Destroy and undefine every guest, then stop the daemon and its QEMU processes."""
        import libvirt

        if self.proc is not None and self.proc.poll() is None and self.socket.exists():
            try:
                conn = libvirt.open(self.uri)
                for dom in conn.listAllDomains():
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
                conn.close()
            except libvirt.libvirtError:
                pass
        qemus = self.qemu_pids()
        terminate(self.proc, timeout=10)
        for pid in qemus:
            if pid_alive(pid):
                os.kill(pid, 15)
                wait_gone(pid)
        shutil.rmtree(self.root, ignore_errors=True)


def _has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True

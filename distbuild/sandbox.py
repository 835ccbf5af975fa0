"""Bubblewrap sandboxes: a command line from a plain spec, and running it.

A sandbox gets new namespaces of every kind (no network at all: its network
namespace holds only a loopback device that is down), a root directory bound
read-only unless the spec says otherwise, writable binds only where the spec
names them, fresh /proc, /dev and /tmp, and an environment holding exactly
what the spec gives. `--die-with-parent` and the new PID namespace make
sure nothing in it outlives the bwrap process that runs it.

Layering over the host: definitions without a toolchain of their own (the
example system, the tests) build with the host's compiler. Where the worker
can mount overlays, distbuild.worker.staging merges the staging area with
the host's directories that way, and nothing here is needed. Otherwise the
host's top-level directories are bound read-only under /.host, and the
sandbox's root merges a directory with the host's root, directory by
directory where both have one; what the directory holds always wins, host
entries appear as symlinks into /.host (bubblewrap 0.8 has no overlay
mounts). Two ways to build the merge:

- `merged_layout`: for a read-only root (a chunk's staging area). bwrap
  makes the directories and symlinks in its own in-memory root, so nothing
  is written to disk. A staged file in a directory the host also has is
  bound onto its place, one mount per file, so that it stays a regular
  file (a symlink there would fool `find -type f`, `cp -P`, libtool).
- `layer_host`: for a root that commands must write into (a system during
  system integration). The symlinks are made in the directory itself,
  recorded, and removed afterwards, so the packed system holds none.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from distbuild import runprocess
from distbuild.errors import DistbuildError
from distbuild.runprocess import CancelToken, LineCallback

HOST_MOUNT = "/.host"

# The only top-level host entries the host layer shows: where tools, their
# libraries and their configuration live. Home directories, /root, /srv,
# /var, /tmp and wherever the worker keeps its keys and work stay unseen,
# so a build cannot copy the network's secrets into an artifact.
HOST_VISIBLE = frozenset({"usr", "etc", "opt", "bin", "sbin", "lib", "lib32", "lib64",
                          "libx32"})

# Host files a build must not read even within HOST_VISIBLE: builds run as
# root in their sandbox, so root-only files would otherwise be readable.
HOST_HIDDEN = (Path("/etc/shadow"), Path("/etc/gshadow"), Path("/etc/shadow-"),
               Path("/etc/gshadow-"), Path("/etc/ssh"), Path("/etc/sudoers"),
               Path("/etc/sudoers.d"), Path("/etc/distbuild"), Path("/etc/ssl/private"))


class SandboxError(DistbuildError):
    """bubblewrap could not set up the sandbox (the command never started)."""


@dataclass(frozen=True)
class Bind:
    """A host path made visible at `dest` inside the sandbox."""

    source: Path
    dest: str
    writable: bool = False


@dataclass(frozen=True)
class SandboxSpec:
    """Everything about one sandboxed command; turned into bwrap options by `bwrap_argv`."""

    argv: tuple[str, ...]
    # None: an empty root that `layout` fills (see `merged_layout`).
    root: Path | None
    root_writable: bool = False
    layout: tuple[str, ...] = ()
    # bwrap operations applied after the binds (see `host_masks`).
    masks: tuple[str, ...] = ()
    binds: tuple[Bind, ...] = ()
    tmpfs: tuple[str, ...] = ("/tmp",)
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = "/"
    hostname: str = "distbuild"


def bwrap_argv(spec: SandboxSpec, bwrap: str = "bwrap", status_fd: int | None = None) -> list[str]:
    """The bwrap command line that runs `spec`."""
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session",
            "--hostname", spec.hostname, "--clearenv"]
    if spec.root is not None:
        args += ["--bind" if spec.root_writable else "--ro-bind", str(spec.root), "/"]
    args += spec.layout
    args += ["--proc", "/proc", "--dev", "/dev"]
    for path in spec.tmpfs:
        args += ["--tmpfs", path]
    for bind in spec.binds:
        args += ["--bind" if bind.writable else "--ro-bind", str(bind.source), bind.dest]
    args += spec.masks
    if spec.root is None and not spec.root_writable:
        args += ["--remount-ro", "/"]
    for key, value in sorted(spec.env.items()):
        args += ["--setenv", key, value]
    args += ["--chdir", spec.cwd]
    if status_fd is not None:
        args += ["--json-status-fd", str(status_fd)]
    return [*args, "--", *spec.argv]


def mountpoints(spec: SandboxSpec) -> list[str]:
    """Paths inside the root that must exist before bwrap can mount on them."""
    return ["/proc", "/dev", *spec.tmpfs, *(b.dest for b in spec.binds)]


def run(spec: SandboxSpec, *, on_line: LineCallback | None = None,
        cancel: CancelToken | None = None, bwrap: str = "bwrap") -> int:
    """Run the sandboxed command; returns its exit status.

    Raises SandboxError when bubblewrap fails before the command starts
    (its own complaint is in the message) and runprocess.Cancelled when
    cancelled. The mount points the root lacked are created for the run
    and removed afterwards.
    """
    created = _make_mountpoints(spec)
    read_fd, write_fd = os.pipe()
    bwrap_lines: list[str] = []

    def collect(line: str) -> None:
        if line.startswith("bwrap: "):
            bwrap_lines.append(line)
        if on_line is not None:
            on_line(line)

    try:
        try:
            status = runprocess.run(bwrap_argv(spec, bwrap, write_fd), on_line=collect,
                                    cancel=cancel, pass_fds=(write_fd,))
        except FileNotFoundError:
            raise SandboxError(f"cannot run bubblewrap: '{bwrap}' not found") from None
        finally:
            os.close(write_fd)
        report = _read_status(read_fd)
    finally:
        os.close(read_fd)
        _remove_mountpoints(created)
    # bwrap reports an exit code only for a command it managed to start.
    if "exit-code" not in report:
        why = bwrap_lines[-1][len("bwrap: "):] if bwrap_lines else f"exit status {status}"
        raise SandboxError(f"sandbox setup failed: {why}")
    return int(report.get("exit-code", status))


def _read_status(fd: int) -> dict:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    report: dict = {}
    for line in data.splitlines():
        try:
            report.update(json.loads(line))
        except ValueError:
            continue
    return report


def _make_mountpoints(spec: SandboxSpec) -> list[Path]:
    created: list[Path] = []
    if spec.root is None:
        return created
    for dest in mountpoints(spec):
        path = spec.root / dest.lstrip("/")
        missing = []
        probe = path
        while not os.path.lexists(probe) and probe != spec.root:
            missing.append(probe)
            probe = probe.parent
        for p in reversed(missing):
            p.mkdir()
            created.append(p)
    return created


def _remove_mountpoints(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            pass


def host_binds(host: Path = Path("/")) -> tuple[Bind, ...]:
    """The host's top-level directories, read-only under /.host."""
    binds = []
    for entry in sorted(os.listdir(host)):
        path = host / entry
        if entry not in HOST_VISIBLE or path.is_symlink() or not path.is_dir():
            continue
        binds.append(Bind(path, f"{HOST_MOUNT}/{entry}"))
    return tuple(binds)


def host_masks(empty_file: Path, hidden: Iterable[Path] = HOST_HIDDEN,
               prefix: str = HOST_MOUNT, tops: Iterable[str] = HOST_VISIBLE) -> tuple[str, ...]:
    """bwrap operations that blank out `hidden` host paths under `prefix` (put after the binds).

    Only paths in the top-level directories `tops` are masked.

    A directory becomes an empty tmpfs; a file reads as `empty_file` (created
    if missing: /dev/null cannot stand in, binds are mounted nodev).
    """
    if not empty_file.exists():
        empty_file.parent.mkdir(parents=True, exist_ok=True)
        empty_file.touch(mode=0o444)
    ops: list[str] = []
    tops = set(tops)
    for path in hidden:
        path = Path(path).absolute()
        if path.parts[1:2] and path.parts[1] not in tops:
            continue  # not visible through the host layer at all
        if path.is_dir() and not path.is_symlink():
            ops += ["--tmpfs", f"{prefix}{path}"]
        elif path.exists() and not path.is_symlink():
            ops += ["--ro-bind", str(empty_file), f"{prefix}{path}"]
    return tuple(ops)


def merged_layout(root: Path, host: Path = Path("/")) -> tuple[str, ...]:
    """bwrap operations that build `root` merged over the host in an empty sandbox root.

    Use with `SandboxSpec(root=None, layout=..., binds=host_binds() + ...)`.
    A directory only `root` has is one bind; a file of `root` inside a merged
    directory is bound onto its place (one mount each).
    """
    ops: list[str] = []
    _merge_ops(str(host), str(root), "", ops, top=True)
    return tuple(ops)


def _merge_ops(host_dir: str, root_dir: str, inside: str, ops: list[str],
               top: bool = False) -> None:
    host_entries = {e.name: e for e in os.scandir(host_dir)
                    if not top or e.name in HOST_VISIBLE}
    own_entries = {e.name: e for e in os.scandir(root_dir)}
    for name in sorted(host_entries.keys() | own_entries.keys()):
        dest = f"{inside}/{name}"
        own, theirs = own_entries.get(name), host_entries.get(name)
        if own is not None and theirs is not None and _real_dir(own) and _real_dir(theirs):
            ops += ["--dir", dest]
            _merge_ops(theirs.path, own.path, dest, ops)
        elif own is not None:
            if own.is_symlink():
                ops += ["--symlink", os.readlink(own.path), dest]
            else:
                ops += ["--ro-bind", own.path, dest]
        else:
            ops += ["--symlink", _host_target(theirs.path), dest]


def _real_dir(entry: os.DirEntry) -> bool:
    return entry.is_dir(follow_symlinks=False)


def _host_target(host_path: str) -> str:
    # Relative host symlinks (/lib -> usr/lib) resolve inside the merged
    # tree as they are; everything else points into /.host.
    if os.path.islink(host_path):
        target = os.readlink(host_path)
        if not target.startswith("/"):
            return target
    return f"{HOST_MOUNT}{host_path}"


@dataclass
class HostLayer:
    """The host's tools made visible under a root; `remove()` takes them away again."""

    root: Path
    binds: tuple[Bind, ...]
    links: list[Path]

    def remove(self) -> None:
        """Delete every symlink this layer added that is still the one it added."""
        for link in reversed(self.links):
            if link.is_symlink():
                link.unlink()
        shutil.rmtree(self.root / HOST_MOUNT.lstrip("/"), ignore_errors=True)


def layer_host(root: Path, host: Path = Path("/")) -> HostLayer:
    """Make the host's root visible through `root` where `root` holds nothing of its own."""
    links: list[Path] = []
    _link_missing(host, root, links, top=True)
    return HostLayer(root, host_binds(host), links)


def _link_missing(host_dir: Path, root_dir: Path, links: list[Path], top: bool = False) -> None:
    for entry in os.listdir(host_dir):
        if top and entry not in HOST_VISIBLE:
            continue
        host_path, root_path = host_dir / entry, root_dir / entry
        if os.path.lexists(root_path):
            if (root_path.is_dir() and not root_path.is_symlink()
                    and host_path.is_dir() and not host_path.is_symlink()):
                _link_missing(host_path, root_path, links)
            continue
        os.symlink(_host_target(str(host_path)), root_path)
        links.append(root_path)

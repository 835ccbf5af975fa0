"""Staging areas and system roots made of unpacked artifacts, layered, never copied.

Every input artifact is unpacked once per worker (`LocalArtifactCache.unpacked`),
as an EROFS image mounted read-only where the worker can mount.
A step then layers those trees with overlayfs, in a mount namespace private
to its thread (distbuild.mounts): a staging area of 50,000 files costs one
mount, not 50,000 files written.

- A chunk's staging area is an overlay of its dependencies' trees, bound
  read-only into the sandbox: a build cannot write into it, nor chmod
  anything in it, and the cache's trees are never reachable from inside.
- Layered over the host (`staging_over_host`, bootstrap chunks), each
  top-level directory both have is one read-only overlay of the staged
  trees over the host's directory, so staged and host files alike are
  what they are (a regular file in /usr/bin is a regular file). Host paths
  builds must not see are hidden by a layer of whiteouts between the two;
  what only the host has is bound as it is, its secrets blanked by bwrap.
- A system's root is an overlay with a writable upper directory in the
  step's own directory: system integration writes copy-on-write, the
  trees stay as they were.

Two artifacts holding the same path: the one staged later wins, whole
(staging order is the build order of the chunks, see chunk.staged_chunks);
directories both hold are merged. That is what unpacking the tarballs one
after another did, and what overlayfs does with the later tree on top.

Where the worker cannot mount (not root), a chunk's staging area is built
from hard links to the trees instead and bound read-only (a read-only
mount refuses writes and chmod through the links too), and a system's
root is unpacked from the tarballs, since integration writes into it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from distbuild import mounts, sandbox
from distbuild.sandbox import Bind


@dataclass
class Staged:
    """How a sandbox sees a staging area; `close()` unmounts what was mounted for it."""

    root: Path | None
    layout: tuple[str, ...] = ()
    binds: tuple[Bind, ...] = ()
    masks: tuple[str, ...] = ()
    mounted: list[Path] = field(default_factory=list)

    def close(self) -> None:
        """Unmount, topmost first, at once; the kernel frees what they held on a thread.

        Freeing a system root's overlay (its 50,000 dentries and inodes) took
        0.2 s, in the step's time: a descriptor held across the detach makes
        its closing, on a thread of its own, the last use that pays for it.
        """
        held = []
        for target in reversed(self.mounted):
            try:
                held.append(os.open(target, os.O_PATH | os.O_CLOEXEC))
            except OSError:
                pass
            mounts.unmount(target)
        self.mounted.clear()
        if held:
            threading.Thread(target=_close_all, args=(held,), name="unmounted",
                             daemon=True).start()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def stage(work: Path, layers: Sequence[Path], *, over_host: bool,
          hidden: Sequence[Path] = (), mask_dir: Path | None = None) -> Staged:
    """Layer `layers` (in staging order: later ones win) for a chunk's commands.

    `work` is a new directory of the step's; `hidden` are host paths a build
    must not see when layered over the host, hidden by whiteouts kept in
    `mask_dir` (made there once; default: in `work`).
    """
    work.mkdir()
    if not mounts.available():
        return _linked(work / "linked", layers, over_host, hidden)
    mounts.private_namespace()
    staged = Staged(root=None)
    try:
        if over_host:
            _over_host(work, layers, hidden, staged, mask_dir)
        else:
            staged.root = work / "root"
            staged.root.mkdir()
            if layers:
                # An upper layer only so that the sandbox's mount points can be made.
                _overlay(work, staged.root, _stack(work, list(reversed(layers)), staged),
                         staged, writable=True)
    except mounts.MountError:
        # A layer overlayfs refuses (a file system it cannot stack on, say):
        # the same staging area, slower.
        staged.close()
        return _linked(work / "linked", layers, over_host, hidden)
    except BaseException:
        staged.close()
        raise
    return staged


def system_root(work: Path, layers: Sequence[Path]) -> Staged | None:
    """A writable, copy-on-write root of `layers` at `work/root`; None: cannot mount here."""
    if not mounts.available():
        return None
    work.mkdir()
    mounts.private_namespace()
    staged = Staged(root=work / "root")
    staged.root.mkdir()
    try:
        if layers:
            _overlay(work, staged.root, _stack(work, list(reversed(layers)), staged), staged,
                     writable=True)
    except mounts.MountError:
        staged.close()
        return None
    except BaseException:
        staged.close()
        raise
    return staged


def _overlay(work: Path, target: Path, lowers: list[Path], staged: Staged,
             writable: bool = False) -> None:
    upper = work_dir = None
    if writable:
        upper, work_dir = target.with_name(target.name + ".upper"), target.with_name(
            target.name + ".work")
        upper.mkdir()
        work_dir.mkdir()
    mounts.mount_overlay(target, lowers, upper, work_dir)
    staged.mounted.append(target)


def _stack(work: Path, lowers: list[Path], staged: Staged) -> list[Path]:
    """`lowers` (topmost first) as at most MAX_LAYERS layers, grouping them if need be.

    overlayfs takes 500 layers, and stacks two overlays deep at most: one
    level of grouping takes 250,000 layers.
    """
    if len(lowers) <= mounts.MAX_LAYERS:
        return lowers
    groups = []
    size = mounts.MAX_LAYERS - 1
    for i in range(0, len(lowers), size):
        target = work / f"group-{i // size}"
        target.mkdir()
        _overlay(work, target, lowers[i:i + size], staged)
        groups.append(target)
    return groups


def _tops(layers: list[Path]) -> dict[str, tuple[str, list[Path]]]:
    """The staged top-level entries as overlayfs shows them: name -> (kind, paths).

    `layers` topmost first; kind is "dir" (paths: every layer's directory,
    topmost first, down to the first layer holding something else there),
    or "other" (paths: the one entry that shows).
    """
    tops: dict[str, tuple[str, list[Path]]] = {}
    closed: set[str] = set()
    for layer in layers:
        with os.scandir(layer) as entries:
            for entry in entries:
                name = entry.name
                if name in closed:
                    continue
                is_dir = entry.is_dir(follow_symlinks=False)
                if name not in tops:
                    tops[name] = ("dir" if is_dir else "other", [Path(entry.path)])
                    if not is_dir:
                        closed.add(name)
                elif is_dir:
                    tops[name][1].append(Path(entry.path))
                else:
                    closed.add(name)
    return tops


def _over_host(work: Path, layers: Sequence[Path], hidden: Sequence[Path],
               staged: Staged, keep: Path | None, host: Path = Path("/")) -> None:
    stacked = _stack(work, list(reversed(layers)), staged)
    own = _tops(stacked)
    views = work / "view"
    views.mkdir()
    ops: list[str] = []
    host_only: list[str] = []
    host_tops = {name for name in os.listdir(host) if name in sandbox.HOST_VISIBLE}
    mask: Path | None = None
    for name in sorted(own.keys() | host_tops):
        dest = f"/{name}"
        host_path = host / name
        host_dir = name in host_tops and host_path.is_dir() and not host_path.is_symlink()
        if name not in own:
            if host_dir:
                ops += ["--ro-bind", str(host_path), dest]
                host_only.append(name)
            else:
                ops += ["--symlink", sandbox._host_target(str(host_path)), dest]
            continue
        kind, paths = own[name]
        if kind == "other":
            entry = paths[0]
            if entry.is_symlink():
                ops += ["--symlink", os.readlink(entry), dest]
            else:
                ops += ["--ro-bind", str(entry), dest]
            continue
        lowers = list(paths)
        if host_dir:
            mask = mask or _whiteouts(keep or work / "mask", hidden, host)
            if (mask / name).is_dir():
                lowers.append(mask / name)
            lowers.append(host_path)
        if len(lowers) == 1:
            ops += ["--ro-bind", str(lowers[0]), dest]
            continue
        target = views / name
        target.mkdir()
        _overlay(work, target, lowers, staged)
        ops += ["--ro-bind", str(target), dest]
    staged.layout = tuple(ops)
    # What the host alone has is bound as it is, its secrets blanked by bwrap.
    # The empty file that stands in for hidden files is the worker's (one inode per step less).
    empty = (keep.parent if keep is not None else work) / "empty"
    staged.masks = sandbox.host_masks(empty, hidden, prefix="", tops=host_only)


def _whiteouts(mask: Path, hidden: Sequence[Path], host: Path) -> Path:
    """A layer that hides `hidden` host paths: overlayfs whiteouts (0/0 character devices).

    Made once at `mask` and kept (it depends only on the worker's settings).
    """
    if mask.is_dir():
        return mask
    tmp = mask.with_name(f".{mask.name}.{os.getpid()}.{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in hidden:
        rel = Path(path).absolute().relative_to("/")
        if not rel.parts or rel.parts[0] not in sandbox.HOST_VISIBLE:
            continue
        if not os.path.lexists(host / rel) or (host / rel.parts[0]).is_symlink():
            continue
        out = tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(out):
            os.mknod(out, stat.S_IFCHR | 0o600, os.makedev(0, 0))
    try:
        os.rename(tmp, mask)
    except OSError:  # another step made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return mask


def _linked(work: Path, layers: Sequence[Path], over_host: bool,
            hidden: Sequence[Path]) -> Staged:
    root = work / "root"
    root.mkdir(parents=True)
    dirs: dict[str, int] = {}
    for layer in layers:
        link_tree(layer, root, dirs)
    for rel, mode in sorted(dirs.items(), reverse=True):
        os.chmod(root / rel, mode)
    if not over_host:
        return Staged(root=root)
    return Staged(root=None, layout=sandbox.merged_layout(root), binds=sandbox.host_binds(),
                  masks=sandbox.host_masks(work / "empty", hidden))


def link_tree(src: Path, dest: Path, dirs: dict[str, int]) -> None:
    """Hard-link everything under `src` into `dest`; what `dest` had at a path loses.

    Directories are made writable for the filling; `dirs` collects their
    modes, to set once everything is in.
    """
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        out = dest if rel == "." else dest / rel
        for name in list(dirnames):
            source = os.path.join(dirpath, name)
            if os.path.islink(source):
                dirnames.remove(name)
                filenames.append(name)
                continue
            target = out / name
            if os.path.lexists(target) and not target.is_dir():
                target.unlink()
            if not target.is_dir():
                target.mkdir(mode=0o700)
            key = os.path.normpath(os.path.join(rel, name))
            dirs[key] = stat.S_IMODE(os.lstat(source).st_mode)
        for name in filenames:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif os.path.lexists(target):
                target.unlink()
            try:
                os.link(os.path.join(dirpath, name), target, follow_symlinks=False)
            except OSError as e:
                if e.errno != errno.EXDEV:  # a tree mounted from an image
                    raise
                shutil.copy2(os.path.join(dirpath, name), target, follow_symlinks=False)

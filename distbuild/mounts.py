"""Overlay mounts in a mount namespace private to the calling thread.

Staging and system assembly layer unpacked artifacts with overlayfs
instead of copying them. The mounts must never show on the host nor
outlive the step, even if the worker is killed: so the thread that stages
first gives itself a mount namespace of its own (`unshare(CLONE_NEWNS)`
affects only the calling thread, and every process it starts, bwrap
included, inherits it). When the thread ends the namespace and every mount
in it go away with it; steps unmount explicitly as well.

Mounting needs CAP_SYS_ADMIN (a worker running as root). `available()`
says whether it works here; callers fall back to hard links without it.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from distbuild.errors import DistbuildError

_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_REC, _MS_PRIVATE = 0x1, 0x4000, 0x40000
_MNT_DETACH = 0x2
# The new mount API (Linux 5.2; "lowerdir+" since 6.8) takes layers one at a
# time, so a step can stack hundreds of layers with long paths; mount(2)
# takes them all in one option string of at most a page.
_SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 429, 430, 431, 432
_FSCONFIG_SET_FLAG, _FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 0, 1, 6
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_AT_FDCWD = -100
_PAGE = 4096
# overlayfs stacks at most 500 lower layers (OVL_MAX_STACK).
MAX_LAYERS = 500

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_private = threading.local()
_available: bool | None = None


class MountError(DistbuildError):
    """A mount or unmount failed."""


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise MountError(f"{what}: {os.strerror(err)}")
    return result


def private_namespace() -> None:
    """Give the calling thread a mount namespace of its own (once per thread)."""
    if getattr(_private, "done", False):
        return
    _check(_libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Nothing mounted here may propagate back to the host's namespace.
    _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None),
           "making / private")
    _private.done = True


def available() -> bool:
    """Whether this process can mount overlays (checked once, in a throwaway thread)."""
    global _available
    if _available is None:
        result: list[bool] = []

        def probe() -> None:
            try:
                private_namespace()
                result.append(True)
            except MountError:
                result.append(False)

        thread = threading.Thread(target=probe, name="mount-probe")
        thread.start()
        thread.join()
        _available = result[0] and _overlay_supported()
    return _available


def _overlay_supported() -> bool:
    try:
        return "overlay" in Path("/proc/filesystems").read_text()
    except OSError:
        return False


def mount_overlay(target: Path, lowers: Sequence[Path], upper: Path | None = None,
                  work: Path | None = None) -> None:
    """Mount `lowers` (first is topmost) at `target`; read-only unless `upper` is given.

    An upper layer is taken to be thrown away with the step: the overlay is
    `volatile` (where the kernel has it, 5.10 on), so unmounting it does not
    sync the upper layer's whole file system (100-800 ms on a busy disk,
    with a packed system's 100 MB dirty beside it). Call
    `private_namespace()` first, in the same thread.
    """
    if not lowers or len(lowers) > MAX_LAYERS:
        raise MountError(f"an overlay takes 1 to {MAX_LAYERS} layers, not {len(lowers)}")
    options: list[tuple[str, str | None]] = [("lowerdir+", str(p)) for p in lowers]
    if upper is not None:
        options += [("upperdir", str(upper)), ("workdir", str(work)), ("volatile", None)]
    try:
        _fsmount(target, options)
    except _NoNewAPI:
        data = "lowerdir=" + ":".join(str(p) for p in lowers)
        if upper is not None:
            data += f",upperdir={upper},workdir={work}"
        if len(data) >= _PAGE:
            raise MountError(f"{len(lowers)} layers do not fit in one mount option string "
                             "on this kernel") from None
        flags = 0 if upper is not None else _MS_RDONLY
        if upper is None or _libc.mount(b"overlay", str(target).encode(), b"overlay", flags,
                                        f"{data},volatile".encode()) != 0:
            _check(_libc.mount(b"overlay", str(target).encode(), b"overlay", flags,
                               data.encode()), f"mounting an overlay on {target}")


class _NoNewAPI(Exception):
    pass


def _fsmount(target: Path, options: list[tuple[str, str | None]]) -> None:
    fs = _libc.syscall(_SYS_FSOPEN, b"overlay", 0)
    if fs < 0:
        raise _NoNewAPI
    try:
        for key, value in options:
            if value is None:
                if _libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_FLAG, key.encode(), None,
                                 0) < 0:
                    continue  # a flag this kernel does not know: only speed is lost
            elif _libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_STRING, key.encode(),
                               value.encode(), 0) < 0:
                if key == "lowerdir+" and ctypes.get_errno() == 22:  # EINVAL: before 6.8
                    raise _NoNewAPI
                _check(-1, f"overlay option {key}={value}")
        _check(_libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0),
               f"creating the overlay for {target}")
        # Without an upper layer the overlay is read-only anyway; say so on the mount too.
        attrs = 0 if any(key == "upperdir" for key, _ in options) else _MOUNT_ATTR_RDONLY
        mnt = _check(_libc.syscall(_SYS_FSMOUNT, fs, 0, attrs), "fsmount")
        try:
            _check(_libc.syscall(_SYS_MOVE_MOUNT, mnt, b"", _AT_FDCWD, str(target).encode(),
                                 _MOVE_MOUNT_F_EMPTY_PATH), f"mounting the overlay on {target}")
        finally:
            os.close(mnt)
    finally:
        os.close(fs)


def unmount(target: Path) -> None:
    """Detach the mount at `target` (lazily: open files keep it until closed)."""
    _check(_libc.umount2(str(target).encode(), _MNT_DETACH), f"unmounting {target}")


def mount_image(target: Path, image: Path) -> None:
    """Mount the EROFS image file `image` read-only at `target` (Linux 6.12: no loop device).

    Call `private_namespace()` first, in the same thread.
    """
    _check(_libc.mount(str(image).encode(), str(target).encode(), b"erofs", _MS_RDONLY, None),
           f"mounting the image {image} on {target}")

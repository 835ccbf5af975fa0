"""Helpers shared by distbuild's Python extensions (the scripts in extensions/).  [edge]

An extension reports progress on stdout and says why it failed on stderr
with exit status 1; `run_main` turns an ExtensionError into exactly that.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TRUE = ("yes", "true", "1")
_FALSE = ("no", "false", "0", "none", "")


class ExtensionError(Exception):
    """Why the extension cannot go on; shown to the user as one line."""


def status(message: str) -> None:
    """One line of progress."""
    print(message, flush=True)


def run_main(main: Callable[[list[str]], None]) -> None:
    """Run an extension's main(argv) and exit with the protocol's status."""
    try:
        main(sys.argv[1:])
    except ExtensionError as e:
        print(f"{Path(sys.argv[0]).name}: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)


def usage(argv: list[str], *names: str) -> list[str]:
    """Check the arguments' count; return them."""
    if len(argv) != len(names):
        raise ExtensionError(f"expected arguments {' '.join(names)}, got {len(argv)}")
    return argv


def get_boolean(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A yes/no setting; YAML booleans arrive as True/False, null as None."""
    value = env.get(name)
    if value is None:
        return default
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ExtensionError(f"{name} must be yes or no, not {value!r}")


def parse_size(value: str, name: str) -> int:
    """Bytes from a size such as 4G, 512M, 1024K or 1048576 (binary units)."""
    match = _SIZE.match(value)
    if not match:
        raise ExtensionError(f"{name} must be a size such as 4G or 512M, not {value!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def get_size(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    """A size setting in bytes, or `default` when unset."""
    value = env.get(name)
    if value is None or value.strip().lower() in ("", "none"):
        return default
    return parse_size(value, name)


def tree_size(root: Path) -> int:
    """Bytes the files under `root` take, counting each inode once."""
    total, seen = 0, set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size + 4096
    return total


def default_disk_size(rootfs: Path) -> int:
    """Room for the tree plus ext4's own metadata and some slack, in whole MiB."""
    wanted = int(tree_size(rootfs) * 1.3) + (64 << 20)
    return -(-wanted // (1 << 20)) << 20


def make_ext4_image(rootfs: Path, image: Path, size: int, label: str = "rootfs") -> None:
    """Make a sparse ext4 filesystem image of `rootfs` with `mkfs.ext4 -d`: no mount, no loop."""
    if size < (8 << 20):
        raise ExtensionError(f"disk size {size} bytes is too small for an ext4 filesystem")
    try:
        with open(image, "xb") as f:
            f.truncate(size)
    except FileExistsError:
        raise ExtensionError(f"{image} already exists; remove it or choose another "
                             "location") from None
    except OSError as e:
        raise ExtensionError(f"cannot create {image}: {e.strerror}") from None
    cmd = ["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(rootfs), str(image)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        image.unlink()
        raise ExtensionError("mkfs.ext4 is not installed (Debian package e2fsprogs)") from None
    if proc.returncode != 0:
        image.unlink()
        detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ExtensionError(f"mkfs.ext4 failed: {detail} (is DISK_SIZE big enough?)")

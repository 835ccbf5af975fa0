"""Debian's linux source, unpacked for the KVM tests without what their kernel never reads.

The test kernel (morphs/strata/kvm-boot/linux.morph) is tinyconfig plus a
few options, and its build reads about 5,000 of the tarball's 79,000
files. Importing, cloning and checking out the rest costs minutes on a
2-core machine, so the tests import a pruned tree: the other architectures,
drivers, sound, networking, Documentation, rust and most of tools/ keep only
their Kconfig, Makefile and Kbuild files (Kconfig sources them all), and
the drivers and tools this configuration builds are kept whole. The chunk
builds the same from the whole tarball, which is what a user imports.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

PRUNED = {"arch", "drivers", "tools", "sound", "net", "Documentation", "rust"}
KEEP_WHOLE = (
    "arch/x86",
    *(f"tools/{d}" for d in ("arch/x86", "build", "include", "lib", "objtool", "scripts")),
    *(f"drivers/{d}" for d in ("acpi", "base", "block", "char", "clocksource", "cpuidle",
                               "pci", "pnp", "power", "rtc", "thermal", "tty", "virtio")),
)
BUILD_FILES = ("Kconfig", "Makefile", "Kbuild")


def kept(relative: str) -> bool:
    """Whether the file at `relative` (inside the source's top folder) is imported."""
    parts = relative.split("/")
    if parts[0] not in PRUNED or len(parts) == 1:
        return True
    if any(relative == k or relative.startswith(k + "/") for k in KEEP_WHOLE):
        return True
    return parts[-1].startswith(BUILD_FILES)


def unpack_pruned(tarball: Path, dest: Path) -> tuple[int, int]:
    """Unpack what `kept` keeps of the tarball's top folder into `dest`; (members, kept)."""
    total = taken = 0
    dest.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        for member in tar:
            total += 1
            _, _, relative = member.name.partition("/")
            if not relative or not (member.isdir() or kept(relative)):
                continue
            taken += 1
            member.name = relative
            tar.extract(member, dest, filter="data")
    return total, taken

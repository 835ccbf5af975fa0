"""A build directory's git repository made from a worker's mirror, without running git.

What `git clone --no-checkout` makes, with the mirror's object files hard
linked (no alternates: the sandbox cannot see the mirror), its branches as
`origin/*` and its tags in `packed-refs`. What a mirror holds is read once
(`clone_plan`) and reused by every step until a fetch changes it: walking the
mirror's objects and refs for each step was a third of a checkout's CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ClonePlan:
    """What `link_clone` makes from a mirror as it stands (read once per fetch into it)."""

    dirs: tuple[str, ...]  # under .git/objects, parents first
    links: tuple[tuple[str, str], ...]  # (the mirror's object file, its path under objects)
    packed_refs: str
    config: str


def clone_plan(mirror: Path) -> ClonePlan:
    """Read what `link_clone` will make from `mirror`: its object files and refs."""
    objects = str(mirror / "objects")
    dirs, links = [], []
    for dirpath, dirnames, filenames in os.walk(objects):
        rel = os.path.relpath(dirpath, objects)
        dirs += [os.path.normpath(os.path.join(rel, name)) for name in dirnames]
        links += [(os.path.join(dirpath, name), os.path.normpath(os.path.join(rel, name)))
                  for name in filenames if not (rel == "info" and name == "alternates")]
    lines = ["# pack-refs with: sorted"]
    for ref, value in sorted(_refs(mirror).items()):
        if ref.startswith("refs/heads/"):
            lines.append(f"{value[0]} refs/remotes/origin/{ref[len('refs/heads/'):]}")
        elif ref.startswith("refs/tags/"):
            lines.append(f"{value[0]} {ref}")
            if value[1]:
                lines.append(f"^{value[1]}")
    config = ("[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
              # No reflog: logs/HEAD would be two more files per step that nothing reads.
              "\tlogAllRefUpdates = false\n"
              f'[remote "origin"]\n\turl = {mirror}\n'
              "\tfetch = +refs/heads/*:refs/remotes/origin/*\n")
    return ClonePlan(tuple(dirs), tuple(links), "\n".join(lines) + "\n", config)


def link_clone(mirror: Path, dest: Path, head: str | None = None,
                plan: ClonePlan | None = None) -> None:
    """What `git clone --no-checkout MIRROR DEST` makes, with the object files hard-linked.

    With `head`, HEAD is that commit, detached, as `git checkout --detach` leaves it.
    `plan`: the mirror's `clone_plan`, if known (it must be current).
    """
    plan = plan or clone_plan(mirror)
    git = os.path.join(dest, ".git")
    objects = os.path.join(git, "objects")
    # Every directory made here is one more to delete after the step (slow on a busy
    # disk): git makes refs/heads and the like itself when it needs them.
    os.makedirs(objects)
    os.mkdir(os.path.join(git, "refs"))
    for d in plan.dirs:
        os.mkdir(os.path.join(objects, d))
    for source, rel in plan.links:
        os.link(source, os.path.join(objects, rel))
    for name, text in (("packed-refs", plan.packed_refs),
                       ("HEAD", f"{head}\n" if head else "ref: refs/heads/master\n"),
                       ("config", plan.config)):
        with open(os.path.join(git, name), "w") as f:
            f.write(text)


def _refs(mirror: Path) -> dict[str, tuple[str, str]]:
    """The mirror's refs: name -> (object, peeled object or "")."""
    refs: dict[str, tuple[str, str]] = {}
    try:
        last = ""
        for line in (mirror / "packed-refs").read_text().splitlines():
            if line.startswith("^") and last:
                refs[last] = (refs[last][0], line[1:].strip())
            elif line and not line.startswith("#"):
                value, _, last = line.partition(" ")
                refs[last] = (value, "")
    except FileNotFoundError:
        pass
    root = mirror / "refs"
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            value = path.read_text().strip()
            if len(value) == 40:
                # A loose ref is newer than its packed copy (whose peeled value may be stale).
                refs[f"refs/{path.relative_to(root)}"] = (value, "")
    return refs

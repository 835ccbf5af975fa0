"""Small definitions trees written into a temporary directory for tests."""

from __future__ import annotations

from pathlib import Path

import yaml

BASE_FILES = {
    "VERSION": "version: 8\n",
    "DEFAULTS": (
        "build-systems:\n"
        "  manual: {}\n"
        "  autotools:\n"
        "    configure-commands: ['./configure --prefix=\"$PREFIX\"']\n"
        "    build-commands: [make]\n"
        "    install-commands: ['make DESTDIR=\"$DESTDIR\" install']\n"
    ),
    "strata/base.morph": (
        "name: base\n"
        "kind: stratum\n"
        "chunks:\n"
        "- name: a\n"
        "  morph: strata/base/a.morph\n"
        "  repo: upstream:a\n"
        "  ref: master\n"
        "- name: b\n"
        "  repo: upstream:b\n"
        "  ref: master\n"
        "  build-system: autotools\n"
        "  build-depends:\n"
        "  - a\n"
    ),
    "strata/base/a.morph": (
        "name: a\n"
        "kind: chunk\n"
        "build-commands:\n"
        "- make\n"
        "install-commands:\n"
        "- make install\n"
    ),
    "strata/apps.morph": (
        "name: apps\n"
        "kind: stratum\n"
        "build-depends:\n"
        "- morph: strata/base.morph\n"
        "chunks:\n"
        "- name: c\n"
        "  repo: upstream:c\n"
        "  ref: v1.0\n"
        "  build-system: manual\n"
    ),
    "systems/s.morph": (
        "name: s\n"
        "kind: system\n"
        "arch: x86_64\n"
        "strata:\n"
        "- name: base\n"
        "  morph: strata/base.morph\n"
        "- name: apps\n"
        "  morph: strata/apps.morph\n"
    ),
}


def write_tree(root: Path, files: dict[str, str | dict | None]) -> Path:
    """Write `files` (text, or a dict dumped as YAML; None deletes) under `root`."""
    for rel, content in files.items():
        path = root / rel
        if content is None:
            path.unlink(missing_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if not isinstance(content, str):
            content = yaml.safe_dump(content, sort_keys=False)
        path.write_text(content)
    return root

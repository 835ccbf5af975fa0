"""The project's extensions: executable, and the Python ones held to the project's lint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distbuild.deploy.extensions import KINDS, PROJECT_EXTENSIONS

EXTENSIONS = sorted(PROJECT_EXTENSIONS.iterdir())


def test_every_extension_is_executable_and_named_by_kind():
    assert EXTENSIONS
    for path in EXTENSIONS:
        assert path.suffix.lstrip(".") in KINDS, path
        assert os.access(path, os.X_OK), path


def test_python_extensions_pass_ruff():
    python = [str(p) for p in EXTENSIONS if p.read_text().startswith("#!/usr/bin/env python3")]
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed beside this Python")
    proc = subprocess.run([ruff, "check", *python], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_shell_extensions_parse():
    for path in EXTENSIONS:
        if path.read_text().startswith("#!/bin/sh"):
            subprocess.run(["sh", "-n", str(path)], check=True)

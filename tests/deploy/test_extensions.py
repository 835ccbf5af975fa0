"""The extension runner: lookup order, environment, progress, and failures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from distbuild.deploy.errors import DeployError
from distbuild.deploy.extensions import (
    PROJECT_EXTENSIONS,
    ExtensionFailed,
    data_dir,
    find_extension,
    require_extension,
    run_extension,
)
from distbuild.deploy.writeext import ExtensionError, make_ext4_image


def script(path: Path, text: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def run(path: Path, *args: str, settings: dict | None = None, cwd: Path) -> list[str]:
    lines: list[str] = []
    run_extension(path, list(args), settings or {}, cwd=cwd, progress=lines.append,
                  where="deployment 'x'")
    return lines


def test_definitions_extensions_come_first(tmp_path):
    assert find_extension("tar", "write", tmp_path) == PROJECT_EXTENSIONS / "tar.write"
    mine = script(tmp_path / "extensions" / "tar.write", "#!/bin/sh\n")
    assert find_extension("tar", "write", tmp_path) == mine
    assert find_extension("extensions/tar", "write", tmp_path) == mine
    assert find_extension("nfsboot", "write", tmp_path) is None


def test_not_executable_is_an_error(tmp_path):
    script(tmp_path / "extensions" / "lazy.write", "#!/bin/sh\n", mode=0o644)
    with pytest.raises(DeployError, match=r"lazy\.write is not executable \(chmod \+x it\)"):
        require_extension("lazy", "write", tmp_path, "deployment 'x'")


def test_environment_and_progress(tmp_path):
    ext = script(tmp_path / "env.configure", """#!/bin/sh
echo "upgrade=$UPGRADE answer=$ANSWER cwd=$(pwd)"
echo "tmpdir=$TMPDIR"
echo "path=$PATH"
echo "pythonpath=$PYTHONPATH"
echo "args=$*"
""")
    lines = run(ext, "a b", "c", settings={"ANSWER": "42"}, cwd=tmp_path)
    assert lines[0] == f"[env.configure] upgrade=no answer=42 cwd={tmp_path}"
    tmpdir = lines[1].split("=", 1)[1]
    assert "distbuild-env.configure-" in tmpdir and not os.path.exists(tmpdir)
    assert lines[2].split("=", 1)[1].startswith(str(Path(sys.executable).parent) + os.pathsep)
    assert str(PROJECT_EXTENSIONS.parent) in lines[3].split("=", 1)[1].split(os.pathsep)
    assert lines[4] == "[env.configure] args=a b c"


def test_python_extension_finds_distbuild(tmp_path):
    ext = script(tmp_path / "py.check", """#!/usr/bin/env python3
from distbuild.deploy import writeext
writeext.status(str(writeext.parse_size("2M", "X")))
""")
    assert run(ext, "loc", cwd=tmp_path) == ["[py.check] 2097152"]


def test_failure_shows_the_last_stderr_lines(tmp_path):
    ext = script(tmp_path / "loud.write", "#!/bin/sh\n"
                 "i=0; while [ $i -lt 30 ]; do echo \"err $i\" >&2; i=$((i+1)); done\nexit 4\n")
    with pytest.raises(ExtensionFailed) as e:
        run(ext, cwd=tmp_path)
    message = str(e.value)
    assert message.startswith("deployment 'x': loud.write failed (exit status 4):\n")
    assert "    err 29" in message and "    err 10" in message and "err 9\n" not in message


def test_failure_without_stderr_and_by_signal(tmp_path):
    quiet = script(tmp_path / "quiet.write", "#!/bin/sh\nexit 1\n")
    with pytest.raises(ExtensionFailed, match=r"quiet\.write failed \(exit status 1\) and "
                                              "wrote nothing on stderr"):
        run(quiet, cwd=tmp_path)
    killed = script(tmp_path / "killed.write", "#!/bin/sh\nkill -9 $$\n")
    with pytest.raises(ExtensionFailed, match=r"killed\.write failed \(killed by signal 9\)"):
        run(killed, cwd=tmp_path)


def test_data_dir_prefers_the_checkout_then_an_installation(tmp_path):
    checkout, site = tmp_path / "checkout", tmp_path / "site-packages"
    (checkout / "extensions").mkdir(parents=True)
    site.mkdir()
    installed = tmp_path / "prefix" / "share" / "distbuild"
    assert data_dir(checkout, [str(tmp_path / "prefix")]) == checkout
    assert data_dir(site, [str(tmp_path / "prefix")]) == site, "nothing installed: no change"
    (installed / "extensions").mkdir(parents=True)
    assert data_dir(site, ["/nonexistent", str(tmp_path / "prefix")]) == installed


def test_image_maker_refuses_existing_file_and_bad_folder(tmp_path):
    (tmp_path / "taken.img").write_text("keep")
    with pytest.raises(ExtensionError, match=r"taken\.img already exists"):
        make_ext4_image(tmp_path, tmp_path / "taken.img", 16 << 20)
    assert (tmp_path / "taken.img").read_text() == "keep"
    with pytest.raises(ExtensionError, match=r"cannot create .*: No such file or directory"):
        make_ext4_image(tmp_path, tmp_path / "no" / "x.img", 16 << 20)
    with pytest.raises(ExtensionError, match="too small"):
        make_ext4_image(tmp_path, tmp_path / "tiny.img", 1 << 20)

"""Finding and running deployment extensions, with Baserock's protocol.  [edge]

`NAME.check LOCATION`, `NAME.configure ROOTFS`, `NAME.write ROOTFS LOCATION`:
settings arrive as environment variables, with UPGRADE and a private
TMPDIR; each stdout line is progress; stderr is kept and shown if the exit
status says the extension failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import distbuild
from distbuild.deploy.errors import DeployError

KINDS = ("check", "configure", "write")
_PACKAGE_ROOT = Path(distbuild.__file__).resolve().parent.parent


def data_dir(package_root: Path, prefixes: Sequence[str]) -> Path:
    """Where distbuild's extensions/ and deploy/ are: the checkout it runs from, else the
    share/distbuild folder an installation put them in (setup.cfg's data_files)."""
    if (package_root / "extensions").is_dir():
        return package_root
    for prefix in prefixes:
        candidate = Path(prefix) / "share" / "distbuild"
        if (candidate / "extensions").is_dir():
            return candidate
    return package_root


DATA_DIR = data_dir(_PACKAGE_ROOT, (sys.prefix, "/usr/local", "/usr"))
PROJECT_EXTENSIONS = DATA_DIR / "extensions"
DEPLOY_FILES = DATA_DIR / "deploy"
_STDERR_LINES_SHOWN = 20


class ExtensionFailed(DeployError):
    """An extension exited non-zero; the message ends with the tail of its stderr."""


def extension_name(name: str) -> str:
    """`kvm` and `extensions/kvm` (as Baserock clusters write it) name the same extension."""
    return name.removeprefix("./").removeprefix("extensions/")


def find_extension(name: str, kind: str, definitions: Path) -> Path | None:
    """The extension file: the definitions' extensions/ first, then the project's."""
    filename = f"{extension_name(name)}.{kind}"
    for folder in (definitions / "extensions", PROJECT_EXTENSIONS):
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    return None


def require_extension(name: str, kind: str, definitions: Path, where: str) -> Path:
    """Like find_extension, but a missing or non-executable file is an error naming both places."""
    path = find_extension(name, kind, definitions)
    filename = f"{extension_name(name)}.{kind}"
    if path is None:
        raise DeployError(f"no {kind} extension '{filename}' in {definitions / 'extensions'} "
                          f"or {PROJECT_EXTENSIONS}", where)
    if not os.access(path, os.X_OK):
        raise DeployError(f"extension {path} is not executable (chmod +x it)", where)
    return path


def extension_environment(settings: Mapping[str, str], tmpdir: Path,
                          base: Mapping[str, str] | None = None,
                          upgrade: bool = False) -> dict[str, str]:
    """The environment an extension runs in.

    The running interpreter's directory goes first on PATH and distbuild on
    PYTHONPATH, so `#!/usr/bin/env python3` extensions find distbuild's
    helpers and libraries (paramiko, libvirt) wherever distbuild is installed.
    """
    env = dict(os.environ if base is None else base)
    env.update(settings)
    env["UPGRADE"] = "yes" if upgrade else "no"
    env["TMPDIR"] = str(tmpdir)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (bindir, env.get("PATH", "")) if p)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_extension(path: Path, args: Sequence[str], settings: Mapping[str, str], *,
                  cwd: Path, progress: Callable[[str], None], where: str,
                  base_environ: Mapping[str, str] | None = None,
                  wrapper: Sequence[str] = ()) -> None:
    """Run one extension to completion; a non-zero exit raises ExtensionFailed.

    `wrapper` goes before the command (the deployer's fakeroot session).
    """
    label = path.name
    tmpdir = Path(tempfile.mkdtemp(prefix=f"distbuild-{label}-"))
    try:
        env = extension_environment(settings, tmpdir, base_environ)
        try:
            proc = subprocess.Popen([*wrapper, str(path), *args], cwd=cwd, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, errors="replace")
        except OSError as e:
            raise DeployError(f"cannot run extension {path}: {e.strerror}", where) from None
        stderr: list[str] = []
        reader = threading.Thread(target=_collect, args=(proc.stderr, stderr), daemon=True)
        reader.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            progress(f"[{label}] {line.rstrip()}")
        status = proc.wait()
        reader.join()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    if status != 0:
        raise ExtensionFailed(_failure_message(label, status, stderr), where)


def _collect(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))


def _failure_message(label: str, status: int, stderr: list[str]) -> str:
    how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
    lines = [line for line in stderr if line.strip()][-_STDERR_LINES_SHOWN:]
    if not lines:
        return f"{label} failed ({how}) and wrote nothing on stderr"
    return f"{label} failed ({how}):\n" + "\n".join(f"    {line}" for line in lines)

"""The KVM tests' kernel, built in the background from the start of the test run.

Building Linux is minutes of CPU on a 2-core machine, and most of the suite
waits on processes and sockets rather than computing. So as soon as
pytest has collected a KVM boot test, this module starts a process of its
own, at the lowest CPU and I/O priority, that runs a real network, imports
Debian's linux source (pruned: tests/linux_source.py) and this checkout's
distbuild package, and builds the kvm-boot system, then keeps the network
up for the tests. The KVM tests run last (tests/conftest.py) and wait for
it; the other tests barely notice a nice-19 build. At the end of the
session the process is sent SIGTERM and stops its network.

Run as `python -m tests.kvm_prebuild ROOT`: writes ROOT/result.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import yaml

from tests.conftest import PROJECT, find_source, sources_dir
from tests.linux_source import unpack_pruned
from tests.network_process import NetworkProcess
from tests.trove_process import pid_alive, wait_gone

SYSTEM = "systems/kvm-boot-x86_64.morph"
LINUX = "linux_*.orig.tar.xz"
_running: bool | None = None
_root: Path | None = None


def missing() -> str | None:
    """Why KVM guests cannot run here (one line), or None."""
    if not Path("/dev/kvm").exists():
        return "/dev/kvm is missing: this machine cannot run KVM guests"
    for tool in ("libvirtd", "qemu-system-x86_64", "setpriv"):
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return f"{tool} is not installed (.ci/run installs it)"
    if os.geteuid() != 0:
        return "the KVM tests need root, to run their libvirtd as nobody"
    if find_source(LINUX) is None:
        return f"no {LINUX} in {sources_dir()} (run .ci/fetch-test-sources)"
    return None


def start_if_possible() -> None:
    """Start the background build (once per test session) where the KVM tests can run."""
    global _running, _root
    if _running is not None or missing() is not None:
        return
    tarball = find_source(LINUX)
    root = _root = Path(tempfile.mkdtemp(prefix="distbuild-kvm-build-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    # Detached (setsid -f): not a descendant of pytest, whose tests check that every
    # process under them is gone after a cancel.
    with open(root / "prebuild.log", "ab") as log:
        subprocess.run(["setsid", "-f", "ionice", "-c", "3", "nice", "-n", "19",
                        sys.executable, "-m", "tests.kvm_prebuild", str(root), str(tarball)],
                       cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    _running = True


def _pid() -> int | None:
    try:
        return int((_root / "pid").read_text()) if _root else None
    except (OSError, ValueError):
        return None


def started() -> bool:
    return _running is not None


def result(timeout: float = 3600) -> tuple[NetworkProcess, Path, str]:
    """Wait for the build; (the network, its definitions checkout, the phase times)."""
    assert _running is not None and _root is not None, "the KVM build was never started"
    done = _root / "result.json"
    waited = time.monotonic()
    deadline = time.monotonic() + timeout
    while not done.exists():
        pid = _pid()
        if (pid is not None and not pid_alive(pid)) or time.monotonic() > deadline:
            log = (_root / "prebuild.log").read_text(errors="replace")
            raise AssertionError(f"the KVM test build stopped:\n{log[-4000:]}")
        time.sleep(0.5)
    outcome = json.loads(done.read_text())
    if not outcome["ok"]:
        raise AssertionError(outcome["error"])
    net = NetworkProcess(_root / "net")
    net.settings = yaml.safe_load(net.config.read_text())
    waited = time.monotonic() - waited
    return net, Path(outcome["checkout"]), f"{outcome['phases']}; the tests waited {waited:.1f} s"


def stop() -> None:
    """SIGTERM the background build, which stops its network; wait for it."""
    global _running
    if _running is None:
        return
    deadline = time.monotonic() + 30
    while _pid() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # not yet written: the process is starting
    pid = _pid()
    if pid is not None and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid, timeout=90)
    _running = None
    if _root is not None:
        shutil.rmtree(_root, ignore_errors=True)


def _phase(phases: list[str], name: str, fn, *args, **kwargs):
    started_at = time.monotonic()
    try:
        return fn(*args, **kwargs)
    finally:
        phases.append(f"{name} {time.monotonic() - started_at:.1f} s")


def _import(net: NetworkProcess, name: str, source: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "distbuild", "trove", "--config",
                           str(net.config), "import", name, str(source)],
                          env=net.env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"trove import {name} failed: {proc.stderr.strip()}")


def _fast_repo(tree: Path) -> None:
    """Make `tree` a one-commit git repository on master, as `trove import` makes of a folder,
    but compressed lightly and pushed without delta search: 230 MB of source pushed with
    git's defaults spends most of its two minutes compressing."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "distbuild import",
           "GIT_AUTHOR_EMAIL": "distbuild@localhost", "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z",
           "GIT_COMMITTER_NAME": "distbuild import", "GIT_COMMITTER_EMAIL": "distbuild@localhost",
           "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z"}
    # No automatic gc: it would run detached, packing and deleting objects under rmtree.
    for argv in (["init", "-q", "-b", "master"], ["config", "core.compression", "1"],
                 ["config", "pack.window", "0"], ["config", "gc.auto", "0"],
                 ["config", "maintenance.auto", "false"], ["add", "-A", "--force", "."],
                 ["commit", "-q", "-m", "Import of Debian's linux source (pruned)"]):
        subprocess.run(["git", *argv], cwd=tree, env=env, check=True, capture_output=True)


def _build(root: Path, tarball: Path, net: NetworkProcess) -> dict:
    phases: list[str] = []
    tree = root / "linux"
    total, kept = _phase(phases, "unpack", unpack_pruned, tarball, tree)
    _phase(phases, "commit", _fast_repo, tree)
    _phase(phases, "import", _import, net, "upstream:linux", tree)
    shutil.rmtree(tree)
    # The network nodes' distbuild chunk: this checkout's package, as a source tree.
    package = root / "distbuild-source"
    for part in ("distbuild", "extensions", "deploy"):
        shutil.copytree(PROJECT / part, package / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    _import(net, "upstream:distbuild", package)
    checkout = net.checkout(root / "defs")
    proc = _phase(phases, "build", net.initiator, checkout, SYSTEM, timeout=3600)
    if proc.returncode != 0:
        log = checkout / "build-step-linux.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        return {"ok": False, "error": f"building {SYSTEM} failed:\n{proc.stdout}\n{tail}"}
    load = os.getloadavg()[0]
    return {"ok": True, "checkout": str(checkout),
            "phases": f"{tarball.name}: {kept} of {total} members imported; "
                      f"{'; '.join(phases)} (load {load:.1f}, at nice 19)"}


def main(root: Path, tarball: Path) -> None:
    def terminate(_signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    (root / "pid").write_text(str(os.getpid()))
    net = NetworkProcess(root / "net", workers=2)
    try:
        net.start(timeout=600)
        try:
            outcome = _build(root, tarball, net)
        except Exception:  # reported to the waiting test, not lost in a log
            outcome = {"ok": False, "error": traceback.format_exc()}
        (root / "result.json.new").write_text(json.dumps(outcome))
        (root / "result.json.new").replace(root / "result.json")
        while True:
            signal.pause()
    finally:
        net.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

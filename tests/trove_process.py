"""A real trove process for tests: `python -m distbuild trove` on 127.0.0.1, free ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from distbuild import tokens
from tests.conftest import PROJECT


class TroveProcess:
    """Starts the trove as its own process and stops it (and checks its git daemon went too)."""

    def __init__(self, root: Path, *extra: str, config: Path | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.git_dir = self.root / "git"
        self.artifact_dir = self.root / "artifacts"
        self.secret_file = self.root / "token-secret"
        if not self.secret_file.exists():
            self.secret_file.write_text(tokens.new_secret() + "\n")
        self.ready_file = self.root / "ready.json"
        self.log_file = self.root / "trove.log"
        self.extra = list(extra)
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    @property
    def secret(self) -> bytes:
        return tokens.read_secret(self.secret_file)

    @property
    def cache_url(self) -> str:
        return f"http://127.0.0.1:{self.info['http_port']}/"

    @property
    def git_url(self) -> str:
        return f"git://127.0.0.1:{self.info['git_port']}"

    def start(self, timeout: float = 20) -> TroveProcess:
        if self.ready_file.exists():
            self.ready_file.unlink()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("DISTBUILD_CONFIG", None)
        args = [sys.executable, "-m", "distbuild", "trove",
                "--git-dir", str(self.git_dir), "--artifact-dir", str(self.artifact_dir),
                "--listen-address", "127.0.0.1", "--git-port", "0", "--http-port", "0",
                "--ssh-port", "0", "--token-secret-file", str(self.secret_file),
                "--ready-file", str(self.ready_file), *self.extra]
        if self.config is not None:
            args += ["--config", str(self.config)]
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_started(self.proc, self.ready_file, timeout, self.stop,
                     lambda: f"trove did not start:\n{self.log()}")
        self.info = json.loads(self.ready_file.read_text())
        return self

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def rss_peak_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        terminate(self.proc)
        daemon = self.info.get("git_daemon_pid")
        if daemon:
            wait_gone(daemon)


def wait_started(proc: subprocess.Popen, ready: Path, timeout: float, stop, failure) -> None:
    """Wait for `proc` to create `ready`; if it exits or `timeout` passes, `stop()` and fail
    with `failure()` (a message that shows the process's log)."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop()
            raise AssertionError(failure())
        time.sleep(0.05)


def terminate(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM a process we started, and SIGKILL it if it has not gone within `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return False
        time.sleep(0.02)
    return True

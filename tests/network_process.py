"""A whole local network for end-to-end tests: `distbuild up` as its own process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import PROJECT
from tests.trove_process import pid_alive, terminate, wait_gone


class NetworkProcess:
    """`distbuild up --workers N` in a state directory, and initiators run against it."""

    def __init__(self, root: Path, workers: int = 2, slots: int = 1):
        self.root = Path(root)
        self.state = self.root / "state"
        self.workers = workers
        self.slots = slots
        self.proc: subprocess.Popen | None = None
        self.settings: dict = {}
        self.pids: dict[str, int] = {}
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(PROJECT) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env.pop("DISTBUILD_CONFIG", None)

    @property
    def config(self) -> Path:
        return self.state / "network.yaml"

    def start(self, timeout: float = 120) -> NetworkProcess:
        self.config.unlink(missing_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_file = self.root / "up.log"
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "distbuild", "up", "--state-dir", str(self.state),
                 "--workers", str(self.workers), "--slots", str(self.slots)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while not (self.config.exists() and "Press Ctrl-C" in self.log()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"network did not start:\n{self.log()}")
            time.sleep(0.1)
        self.settings = yaml.safe_load(self.config.read_text())
        self.pids = json.loads((self.state / "run" / "pids.json").read_text())
        return self

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def component_log(self, name: str) -> str:
        path = self.state / "logs" / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def checkout(self, dest: Path) -> Path:
        """A fresh clone of the network's example definitions."""
        subprocess.run(["git", "clone", "-q", self.settings["definitions_url"], str(dest)],
                       check=True, capture_output=True)
        subprocess.run(["git", "-C", str(dest), "config", "user.email", "t@127.0.0.1"],
                       check=True)
        subprocess.run(["git", "-C", str(dest), "config", "user.name", "test"], check=True)
        return dest

    def initiator(self, checkout: Path, *args: str, wait: bool = True, timeout: float = 180):
        """Run `distbuild --config network.yaml ARGS` in `checkout`."""
        argv = [sys.executable, "-m", "distbuild", "--config", str(self.config), *args]
        if not wait:
            return subprocess.Popen(argv, cwd=checkout, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        return subprocess.run(argv, cwd=checkout, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def client(self, *args: str, cwd: Path | None = None):
        """Run another client command (status, list, cancel) against the network."""
        return subprocess.run([sys.executable, "-m", "distbuild", *args, "--config",
                               str(self.config)], cwd=cwd or self.root, env=self.env,
                              capture_output=True, text=True, timeout=60)

    def attempts(self) -> list[dict]:
        """Every build attempt the controller recorded."""
        db = sqlite3.connect(self.state / "controller" / "controller.db")
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM attempts ORDER BY started")]
        finally:
            db.close()

    def node_key(self, node_id: str) -> str | None:
        """The cache key the controller recorded for a node of the newest request, if any."""
        db = sqlite3.connect(self.state / "controller" / "controller.db")
        try:
            row = db.execute("SELECT n.cache_key FROM nodes n JOIN requests r "
                             "ON r.id = n.request_id WHERE n.node_id = ? "
                             "ORDER BY r.seq DESC LIMIT 1", (node_id,)).fetchone()
        finally:
            db.close()
        return row[0] if row else None

    def pid(self, name: str) -> int:
        """The PID component `name` runs as now (`up` starts a component again that died)."""
        self.pids = json.loads((self.state / "run" / "pids.json").read_text())
        return self.pids[name]

    def __enter__(self) -> NetworkProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM `up`, which stops its components; then check every PID is gone."""
        try:
            self.pid("trove")
        except (OSError, ValueError, KeyError):
            pass
        terminate(self.proc, timeout=30)
        for pid in self.pids.values():
            if pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
                wait_gone(pid)


def processes_with(marker: str) -> list[int]:
    """PIDs whose command line contains `marker` (read from /proc, for tests to check by PID)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            found.append(int(entry.name))
    return found


def edit(path: Path, old: str, new: str) -> None:
    """Replace the first `old` in file `path` (which must hold it) with `new`."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def wait_for(predicate, timeout: float, what: str):
    """The first true value of `predicate()`, polled every 50 ms; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def restart_workers(net, **worker_settings) -> None:
    """Start both (idle) workers again with these settings changed."""
    joined = net.component_log("controller").count(" slot(s)")
    for name in ("worker-1", "worker-2"):
        path = net.state / f"{name}.yaml"
        settings = yaml.safe_load(path.read_text())
        settings["worker"].update(worker_settings)
        path.write_text(yaml.safe_dump(settings))
        old = net.pid(name)
        os.kill(old, signal.SIGTERM)  # idle: it leaves at once, and `up` starts it again
        wait_for(lambda old=old, name=name: net.pid(name) != old, 15, f"{name} to restart")
    wait_for(lambda: net.component_log("controller").count(" slot(s)") >= joined + 2, 30,
             "the workers to join again")

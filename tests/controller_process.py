"""A real controller process for tests: `python -m distbuild controller` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from distbuild import keygen, ssh
from tests.conftest import PROJECT
from tests.trove_process import terminate, wait_started


class ControllerProcess:
    """Starts the controller with a fresh key set; known_hosts trusts its actual ports."""

    def __init__(self, root: Path, trove_git_url: str = "git://127.0.0.1:1",
                 artifact_cache_url: str = "http://127.0.0.1:1/", **settings):
        self.root = Path(root)
        self.keys = keygen.generate(self.root / "keys", ("127.0.0.1", []), ("127.0.0.1", []))
        self.config = self.root / "controller.yaml"
        section = {
            "state_dir": str(self.root / "state"),
            "trove_git_url": trove_git_url,
            "artifact_cache_url": artifact_cache_url,
            "token_secret_file": str(self.keys.token_secret),
            "host_key": str(self.keys.controller_host_key),
            "initiator_authorized_keys": str(self.keys.initiator_authorized_keys),
            "worker_authorized_keys": str(self.keys.worker_authorized_keys),
            "initiator_port": 0, "worker_port": 0, "dashboard_port": 0, **settings,
        }
        self.config.write_text(yaml.safe_dump({"controller": section}))
        self.ready_file = self.root / "controller-ready.json"
        self.log_file = self.root / "controller.log"
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self, timeout: float = 20) -> ControllerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("DISTBUILD_CONFIG", None)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "distbuild", "controller", "--config", str(self.config),
                 "--ready-file", str(self.ready_file)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_started(self.proc, self.ready_file, timeout, self.stop,
                     lambda: f"controller did not start:\n{self.log()}")
        self.info = json.loads(self.ready_file.read_text())
        host_key = ssh.public_key_of(self.keys.controller_host_key)
        self.keys.known_hosts.write_text("".join(
            ssh.known_hosts_line("127.0.0.1", self.info[p], host_key) + "\n"
            for p in ("initiator_port", "worker_port")))
        return self

    @property
    def initiator_port(self) -> int:
        return self.info["initiator_port"]

    @property
    def worker_port(self) -> int:
        return self.info["worker_port"]

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def stop(self) -> None:
        terminate(self.proc)

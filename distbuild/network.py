"""`distbuild up`: a whole distbuild network on this machine, one process per component.

It starts a trove, a controller and N workers on 127.0.0.1, each as its own
`distbuild trove|controller|worker` process, as they would run on separate
machines. The first run writes the keys and creates the trove; every run
imports the example sources and definitions from morphs/ (unchanged content
pushes nothing). It writes DIR/network.yaml for the client commands, prints
how to build, and stops every process it started on Ctrl-C or SIGTERM.
With --demo it builds the example system once, prints its artifact, and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distbuild import keygen, ssh
from distbuild.errors import DistbuildError

PROJECT = Path(__file__).resolve().parent.parent
MORPHS = PROJECT / "morphs"
EXAMPLE_SYSTEM = "systems/example-system-x86_64.morph"
DEFINITIONS_REPO = "baserock/definitions"
ADDRESS = "127.0.0.1"


class NetworkError(DistbuildError):
    """A component of the local network failed to start."""


def say(text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    print(f"{stamp} {text}", flush=True)


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Network:
    state_dir: Path
    workers: int = 2
    slots: int = 1
    components: list[Component] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.resolve()
        self.keys = keygen.KeySet.in_dir(self.state_dir / "keys")
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(PROJECT) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env.pop("DISTBUILD_CONFIG", None)

    def _distbuild(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "distbuild", *args]

    def _start(self, name: str, argv: list[str], ready: Path | None = None,
               timeout: float = 30) -> dict:
        component = Component(name, argv, self.state_dir / "logs" / f"{name}.log")
        if ready is not None and ready.exists():
            ready.unlink()
        component.start(self.env)
        self.components.append(component)
        if ready is None:
            return {}
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if component.proc.poll() is not None or time.monotonic() > deadline:
                tail = component.log.read_text().strip().splitlines()[-5:]
                raise NetworkError(f"{name} did not start; its log ends: " + " | ".join(tail),
                                   str(component.log))
            time.sleep(0.05)
        return json.loads(ready.read_text())

    def start(self) -> dict:
        """Start every component; returns the settings written to network.yaml."""
        keygen.generate(self.keys.known_hosts.parent, (ADDRESS, []), (ADDRESS, []))
        d = self.state_dir
        (d / "run").mkdir(parents=True, exist_ok=True)
        trove = self._start("trove", self._distbuild(
            "trove", "--git-dir", str(d / "trove" / "git"),
            "--artifact-dir", str(d / "trove" / "artifacts"), "--listen-address", ADDRESS,
            "--git-port", "0", "--http-port", "0", "--ssh-port", "0",
            "--authorized-keys", str(self.keys.trove_authorized_keys),
            "--host-key", str(self.keys.trove_host_key),
            "--token-secret-file", str(self.keys.token_secret),
            "--ready-file", str(d / "run" / "trove.json")), d / "run" / "trove.json")
        git_url = f"git://{ADDRESS}:{trove['git_port']}"
        cache_url = f"http://{ADDRESS}:{trove['http_port']}/"
        controller_conf = d / "controller.yaml"
        controller_conf.write_text(yaml.safe_dump({"controller": {
            "state_dir": str(d / "controller"), "trove_git_url": git_url,
            "artifact_cache_url": cache_url, "token_secret_file": str(self.keys.token_secret),
            "host_key": str(self.keys.controller_host_key),
            "initiator_authorized_keys": str(self.keys.initiator_authorized_keys),
            "worker_authorized_keys": str(self.keys.worker_authorized_keys),
            "listen_address": ADDRESS, "initiator_port": 0, "worker_port": 0}}))
        controller = self._start("controller", self._distbuild(
            "controller", "--config", str(controller_conf),
            "--ready-file", str(d / "run" / "controller.json")), d / "run" / "controller.json")
        self._trust(controller["initiator_port"], controller["worker_port"], trove["ssh_port"])
        settings = {
            "controller_initiator_address": ADDRESS,
            "controller_initiator_port": controller["initiator_port"],
            "artifact_cache_url": cache_url,
            "trove_git_url": git_url,
            "trove_ssh_url": f"ssh://git@{ADDRESS}:{trove['ssh_port']}",
            "definitions_url": f"{git_url}/{DEFINITIONS_REPO}",
            "definitions_repo": DEFINITIONS_REPO,
            "identity": str(self.keys.initiator_key),
            "known_hosts": str(self.keys.known_hosts),
        }
        self._import_examples(settings)
        for n in range(1, self.workers + 1):
            worker_conf = d / f"worker-{n}.yaml"
            worker_conf.write_text(yaml.safe_dump({"worker": {
                "name": f"worker-{n}", "controller_address": ADDRESS,
                "controller_port": controller["worker_port"],
                "identity": str(self.keys.worker_key), "known_hosts": str(self.keys.known_hosts),
                "work_dir": str(d / f"worker-{n}"), "slots": self.slots,
                # The example definitions bring no toolchain: build with the host's.
                "staging_over_host": True}}))
            self._start(f"worker-{n}", self._distbuild("worker", "--config", str(worker_conf)))
        self._wait_for_workers()
        network_yaml = d / "network.yaml"
        tmp = network_yaml.with_name("network.yaml.tmp")
        tmp.write_text(yaml.safe_dump(settings, sort_keys=False))
        os.replace(tmp, network_yaml)
        (d / "run" / "pids.json").write_text(json.dumps(
            {c.name: c.proc.pid for c in self.components if c.proc}))
        return settings

    def _wait_for_workers(self, timeout: float = 30) -> None:
        """Return once every worker has joined the controller; a worker that died is an error."""
        controller_log = self.state_dir / "logs" / "controller.log"
        workers = [c for c in self.components if c.name.startswith("worker-")]
        deadline = time.monotonic() + timeout
        while True:
            text = controller_log.read_text() if controller_log.exists() else ""
            waiting = [c for c in workers if f"worker {c.name}: arch " not in text]
            if not waiting:
                return
            for c in waiting:
                if c.proc is not None and c.proc.poll() is not None:
                    tail = c.log.read_text().strip().splitlines()[-1:] if c.log.exists() else []
                    raise NetworkError(f"{c.name} exited with status {c.proc.returncode}: "
                                       f"{' '.join(tail)}", str(c.log))
            if time.monotonic() > deadline:
                raise NetworkError(f"{', '.join(c.name for c in waiting)} did not join the "
                                   f"controller within {timeout:.0f} s", str(controller_log))
            time.sleep(0.05)

    def _trust(self, initiator_port: int, worker_port: int, trove_ssh_port: int) -> None:
        controller_key = ssh.public_key_of(self.keys.controller_host_key)
        trove_key = ssh.public_key_of(self.keys.trove_host_key)
        lines = [ssh.known_hosts_line(ADDRESS, initiator_port, controller_key),
                 ssh.known_hosts_line(ADDRESS, worker_port, controller_key),
                 ssh.known_hosts_line(ADDRESS, trove_ssh_port, trove_key)]
        self.keys.known_hosts.write_text("\n".join(lines) + "\n")

    def _import_examples(self, settings: dict) -> None:
        """The example sources as delta/NAME and the definitions as baserock/definitions."""
        config_file = self.state_dir / "network.yaml.import"
        config_file.write_text(yaml.safe_dump(settings))
        try:
            for source in sorted((MORPHS / "sources").iterdir()):
                self._run_import(f"delta/{source.name}", source, config_file)
            with tempfile.TemporaryDirectory(prefix="distbuild-definitions-") as tmp:
                definitions = Path(tmp) / "definitions"
                shutil.copytree(MORPHS, definitions, ignore=shutil.ignore_patterns("sources"))
                self._run_import(DEFINITIONS_REPO, definitions, config_file)
        finally:
            config_file.unlink(missing_ok=True)

    def _run_import(self, name: str, source: Path, config_file: Path) -> None:
        proc = subprocess.run(self._distbuild("trove", "import", "--config", str(config_file),
                                              name, str(source)),
                              env=self.env, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise NetworkError(f"importing {name} failed: {proc.stderr.strip()}", str(source))

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()

    def watch(self, stop_requested) -> None:
        """Report components that exit, until asked to stop."""
        reported: set[str] = set()
        while not stop_requested():
            for c in self.components:
                if c.name not in reported and c.proc and c.proc.poll() is not None:
                    reported.add(c.name)
                    say(f"{c.name} exited with status {c.proc.returncode}; see {c.log}")
            time.sleep(0.5)


def checkout_definitions(settings: dict, dest: Path) -> Path:
    """A git checkout of the network's example definitions, for the initiator to run in."""
    if not (dest / ".git").exists():
        subprocess.run(["git", "clone", "-q", settings["definitions_url"], str(dest)],
                       check=True, capture_output=True)
    else:
        subprocess.run(["git", "-C", str(dest), "pull", "-q", "--ff-only"],
                       capture_output=True)
    return dest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="how many workers (default 2)")
    parser.add_argument("--slots", type=int, default=1, help="steps each worker runs at once")
    parser.add_argument("--state-dir", type=Path, default=Path("state"),
                        help="where the network keeps its keys, trove and logs "
                             "(default: ./state)")
    parser.add_argument("--demo", action="store_true",
                        help="build the example system once, print its artifact, and stop")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise NetworkError("a network needs at least one worker", "--workers")
    network = Network(args.state_dir, args.workers, args.slots)
    stopping = {"now": False}

    def stop(signum, frame):
        stopping["now"] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        say(f"Starting a distbuild network in {network.state_dir}")
        settings = network.start()
        definitions = checkout_definitions(settings, network.state_dir / "definitions")
        network_yaml = network.state_dir / "network.yaml"
        say(f"Network up: trove {settings['trove_git_url']}, artifact cache "
            f"{settings['artifact_cache_url']}, controller {ADDRESS}:"
            f"{settings['controller_initiator_port']}, {args.workers} worker(s)")
        say(f"Settings for client commands: {network_yaml}")
        print("\nTo build the example system:\n"
              f"  cd {definitions}\n"
              f"  DISTBUILD_CONFIG={network_yaml} distbuild {EXAMPLE_SYSTEM}\n"
              f"Logs of the network's processes: {network.state_dir / 'logs'}\n", flush=True)
        if args.demo:
            return demo(network, definitions, network_yaml)
        say("Press Ctrl-C to stop the network")
        network.watch(lambda: stopping["now"])
        return 0
    finally:
        say("Stopping the network")
        network.stop()


def demo(network: Network, definitions: Path, network_yaml: Path) -> int:
    """Build the example system as an initiator would, from the checkout."""
    proc = subprocess.run(network._distbuild("--config", str(network_yaml), EXAMPLE_SYSTEM),
                          cwd=definitions, env=network.env)
    return proc.returncode

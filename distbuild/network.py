"""`distbuild up`: a whole distbuild network on this machine, one process per component.

It starts a trove, a controller and N workers on 127.0.0.1, each as its own
`distbuild trove|controller|worker` process reading its own settings file
(STATE/trove.yaml, controller.yaml, worker-N.yaml), as they would run on
separate machines. Those files carry the real ports, and a later `up` on the
same state directory reuses them when they are free, so URLs printed before,
known_hosts and workers' settings stay valid. The first run writes the keys
and creates the trove; a run imports an example repository from morphs/ only
where the trove does not have it yet, so a branch a user pushed is never
moved. It writes STATE/network.yaml for the client commands, prints how to
build, restarts any component that dies (see supervise.py), and stops every
process it started on Ctrl-C or SIGTERM. One `up` at a time holds a state
directory (STATE/up.lock). With --demo it builds the example system once,
prints its artifact, and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from distbuild import keygen, ssh
from distbuild.errors import DistbuildError
from distbuild.supervise import Component, StateLock, Supervisor

PROJECT = Path(__file__).resolve().parent.parent
MORPHS = PROJECT / "morphs"
EXAMPLE_SYSTEM = "systems/example-system-x86_64.morph"
DEFINITIONS_REPO = "baserock/definitions"
ADDRESS = "127.0.0.1"
# (settings file, section, key) of every port the network listens on.
PORTS = {"git_port": ("trove.yaml", "trove"), "http_port": ("trove.yaml", "trove"),
         "ssh_port": ("trove.yaml", "trove"),
         "initiator_port": ("controller.yaml", "controller"),
         "worker_port": ("controller.yaml", "controller"),
         "dashboard_port": ("controller.yaml", "controller")}


class NetworkError(DistbuildError):
    """A component of the local network failed to start."""


def say(text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    print(f"{stamp} {text}", flush=True)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ADDRESS, port))
        except OSError:
            return False
    return True


def choose_ports(previous: dict[str, int]) -> dict[str, int]:
    """A port for each name: the previous one when it is free, else a new free one."""
    chosen: dict[str, int] = {}
    holders = []
    try:
        for name in PORTS:
            port = previous.get(name)
            if isinstance(port, int) and port > 0 and port not in chosen.values() \
                    and _port_free(port):
                chosen[name] = port
                continue
            # Held open until every port is chosen, so no two names get the same one.
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            holders.append(s)
            s.bind((ADDRESS, 0))
            chosen[name] = s.getsockname()[1]
    finally:
        for s in holders:
            s.close()
    return chosen


class Network:
    """The components of one local network in `state_dir`, started and kept running."""

    def __init__(self, state_dir: Path, workers: int = 2, slots: int = 1):
        self.state_dir = Path(state_dir).resolve()
        self.workers = workers
        self.slots = slots
        self.keys = keygen.KeySet.in_dir(self.state_dir / "keys")
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(PROJECT) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env.pop("DISTBUILD_CONFIG", None)
        self.lock = StateLock(self.state_dir)
        self.supervisor = Supervisor(self.env, say, self._write_pids)

    @property
    def components(self) -> list[Component]:
        return self.supervisor.components

    def _distbuild(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "distbuild", *args]

    def _start(self, name: str, argv: list[str], ready: Path | None = None,
               timeout: float = 30) -> dict:
        component = self.supervisor.add(
            Component(name, argv, self.state_dir / "logs" / f"{name}.log", ready))
        if ready is None:
            return {}
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if component.exited() is not None or time.monotonic() > deadline:
                tail = component.log.read_text().strip().splitlines()[-5:]
                raise NetworkError(f"{name} did not start; its log ends: " + " | ".join(tail),
                                   str(component.log))
            time.sleep(0.05)
        return json.loads(ready.read_text())

    def _write_settings(self, name: str, section: str, values: dict) -> Path:
        path = self.state_dir / name
        tmp = path.with_name(name + ".tmp")
        tmp.write_text(yaml.safe_dump({section: values}, sort_keys=False))
        os.replace(tmp, path)
        return path

    def previous_ports(self) -> dict[str, int]:
        """The ports the settings files of an earlier run name (none on a first run)."""
        found = {}
        for key, (name, section) in PORTS.items():
            path = self.state_dir / name
            try:
                values = (yaml.safe_load(path.read_text()) or {}).get(section) or {}
            except (OSError, yaml.YAMLError, AttributeError):
                continue
            if isinstance(values, dict) and isinstance(values.get(key), int):
                found[key] = values[key]
        return found

    def start(self) -> dict:
        """Start every component; returns the settings written to network.yaml."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        ports = choose_ports(self.previous_ports())
        keygen.generate(self.keys.known_hosts.parent, (ADDRESS, []), (ADDRESS, []))
        d = self.state_dir
        (d / "run").mkdir(parents=True, exist_ok=True)
        git_url = f"git://{ADDRESS}:{ports['git_port']}"
        cache_url = f"http://{ADDRESS}:{ports['http_port']}/"
        ssh_url = f"ssh://git@{ADDRESS}:{ports['ssh_port']}"
        self._trust(ports["initiator_port"], ports["worker_port"], ports["ssh_port"])
        trove_conf = self._write_settings("trove.yaml", "trove", {
            "git_dir": str(d / "trove" / "git"), "artifact_dir": str(d / "trove" / "artifacts"),
            "listen_address": ADDRESS, "git_port": ports["git_port"],
            "http_port": ports["http_port"], "ssh_port": ports["ssh_port"],
            "authorized_keys": str(self.keys.trove_authorized_keys),
            "host_key": str(self.keys.trove_host_key),
            "token_secret_file": str(self.keys.token_secret)})
        self._start("trove", self._distbuild(
            "trove", "--config", str(trove_conf), "--ready-file", str(d / "run" / "trove.json")),
            d / "run" / "trove.json")
        controller_conf = self._write_settings("controller.yaml", "controller", {
            "state_dir": str(d / "controller"), "trove_git_url": git_url,
            "artifact_cache_url": cache_url, "trove_ssh_url": ssh_url,
            "trove_ssh_host_key": ssh.public_key_of(self.keys.trove_host_key).line(),
            "definitions_repo": DEFINITIONS_REPO,
            "token_secret_file": str(self.keys.token_secret),
            "host_key": str(self.keys.controller_host_key),
            "initiator_authorized_keys": str(self.keys.initiator_authorized_keys),
            "worker_authorized_keys": str(self.keys.worker_authorized_keys),
            "listen_address": ADDRESS, "initiator_port": ports["initiator_port"],
            "worker_port": ports["worker_port"], "dashboard_address": ADDRESS,
            "dashboard_port": ports["dashboard_port"]})
        self._start("controller", self._distbuild(
            "controller", "--config", str(controller_conf),
            "--ready-file", str(d / "run" / "controller.json")), d / "run" / "controller.json")
        settings = {
            "controller_initiator_address": ADDRESS,
            "controller_initiator_port": ports["initiator_port"],
            "artifact_cache_url": cache_url,
            "trove_git_url": git_url,
            "trove_ssh_url": ssh_url,
            "definitions_url": f"{git_url}/{DEFINITIONS_REPO}",
            "definitions_repo": DEFINITIONS_REPO,
            "identity": str(self.keys.initiator_key),
            "known_hosts": str(self.keys.known_hosts),
            "dashboard_url": f"http://{ADDRESS}:{ports['dashboard_port']}/",
        }
        self._import_examples(settings)
        controller_log = d / "logs" / "controller.log"
        joined_after = controller_log.stat().st_size if controller_log.exists() else 0
        for n in range(1, self.workers + 1):
            worker_conf = self._write_settings(f"worker-{n}.yaml", "worker", {
                "name": f"worker-{n}", "controller_address": ADDRESS,
                "controller_port": ports["worker_port"],
                "identity": str(self.keys.worker_key), "known_hosts": str(self.keys.known_hosts),
                "work_dir": str(d / f"worker-{n}"), "slots": self.slots,
                # The example definitions bring no toolchain: build with the host's.
                "staging_over_host": True})
            self._start(f"worker-{n}", self._distbuild("worker", "--config", str(worker_conf)))
        self._wait_for_workers(joined_after)
        network_yaml = d / "network.yaml"
        tmp = network_yaml.with_name("network.yaml.tmp")
        tmp.write_text(yaml.safe_dump(settings, sort_keys=False))
        os.replace(tmp, network_yaml)
        self._write_pids()
        return settings

    def _write_pids(self) -> None:
        path = self.state_dir / "run" / "pids.json"
        tmp = path.with_name("pids.json.tmp")
        tmp.write_text(json.dumps(self.supervisor.pids()))
        os.replace(tmp, path)

    def _wait_for_workers(self, start: int, timeout: float = 30) -> None:
        """Return once every worker has joined the controller (in its log after byte
        `start`: the log goes on across runs); a worker that died is an error."""
        controller_log = self.state_dir / "logs" / "controller.log"
        workers = [c for c in self.components if c.name.startswith("worker-")]
        deadline = time.monotonic() + timeout
        while True:
            text = (controller_log.read_bytes()[start:].decode("utf-8", "replace")
                    if controller_log.exists() else "")
            waiting = [c for c in workers if f"worker {c.name}: arch " not in text]
            if not waiting:
                return
            for c in waiting:
                if c.exited() is not None:
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
        """The example sources as delta/NAME and the definitions as baserock/definitions.

        Only repositories the trove does not have yet: one that exists may hold
        branches a user pushed, which an import would move.
        """
        config_file = self.state_dir / "network.yaml.import"
        config_file.write_text(yaml.safe_dump(settings))
        try:
            for source in sorted((MORPHS / "sources").iterdir()):
                self._import_missing(f"delta/{source.name}", source, config_file, settings)
            if self._has_branches(settings, DEFINITIONS_REPO):
                return
            with tempfile.TemporaryDirectory(prefix="distbuild-definitions-") as tmp:
                definitions = Path(tmp) / "definitions"
                shutil.copytree(MORPHS, definitions, ignore=shutil.ignore_patterns("sources"))
                self._run_import(DEFINITIONS_REPO, definitions, config_file)
        finally:
            config_file.unlink(missing_ok=True)

    def _import_missing(self, name: str, source: Path, config_file: Path,
                        settings: dict) -> None:
        if not self._has_branches(settings, name):
            self._run_import(name, source, config_file)

    def _has_branches(self, settings: dict, name: str) -> bool:
        proc = subprocess.run(["git", "ls-remote", "--heads",
                               f"{settings['trove_git_url']}/{name}"],
                              capture_output=True, text=True, timeout=60)
        return proc.returncode == 0 and bool(proc.stdout.strip())

    def _run_import(self, name: str, source: Path, config_file: Path) -> None:
        proc = subprocess.run(self._distbuild("trove", "import", "--config", str(config_file),
                                              name, str(source)),
                              env=self.env, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise NetworkError(f"importing {name} failed: {proc.stderr.strip()}", str(source))

    def stop(self) -> None:
        self.supervisor.stop()
        self.lock.release()

    def watch(self, done) -> None:
        """Restart components that exit, until `done()` is true."""
        self.supervisor.watch(done)


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
    network.lock.acquire()
    try:
        say(f"Starting a distbuild network in {network.state_dir}")
        settings = network.start()
        definitions = checkout_definitions(settings, network.state_dir / "definitions")
        network_yaml = network.state_dir / "network.yaml"
        say(f"Network up: trove {settings['trove_git_url']}, artifact cache "
            f"{settings['artifact_cache_url']}, controller {ADDRESS}:"
            f"{settings['controller_initiator_port']}, {args.workers} worker(s)")
        say(f"Dashboard: {settings['dashboard_url']}")
        say(f"Settings for client commands: {network_yaml}")
        print("\nTo build the example system:\n"
              f"  cd {definitions}\n"
              f"  DISTBUILD_CONFIG={network_yaml} distbuild {EXAMPLE_SYSTEM}\n"
              f"Logs of the network's processes: {network.state_dir / 'logs'}\n", flush=True)
        if args.demo:
            return demo(network, definitions, network_yaml, lambda: stopping["now"])
        say("Press Ctrl-C to stop the network")
        network.watch(lambda: stopping["now"])
        return 0
    finally:
        say("Stopping the network")
        network.stop()


def demo(network: Network, definitions: Path, network_yaml: Path, stopping) -> int:
    """Build the example system as an initiator would, from the checkout."""
    proc = subprocess.Popen(network._distbuild("--config", str(network_yaml), EXAMPLE_SYSTEM),
                            cwd=definitions, env=network.env)
    network.watch(lambda: proc.poll() is not None or stopping())
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    return proc.wait()

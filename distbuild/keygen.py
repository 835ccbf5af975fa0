"""`distbuild keygen`: the key set of one distbuild network, in OpenSSH format.

Writes into DIR (default keys/): the controller's and the trove's host keys,
the worker key and the initiator key (private keys mode 0600), the
authorized-keys file of each role, a known_hosts file that trusts the
controller and the trove at the given addresses, and the secret the
controller and the trove share for upload tokens. Existing keys are kept, so
running it again only fills in what is missing and refreshes known_hosts.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

from distbuild import ssh, tokens


@dataclass(frozen=True)
class KeySet:
    """Where each file of a network's key set lives (each file is named like its field)."""

    controller_host_key: Path
    trove_host_key: Path
    worker_key: Path
    initiator_key: Path
    worker_authorized_keys: Path
    initiator_authorized_keys: Path
    trove_authorized_keys: Path
    known_hosts: Path
    token_secret: Path

    @classmethod
    def in_dir(cls, directory: Path) -> KeySet:
        return cls(**{f.name: Path(directory) / f.name for f in fields(cls)})


def generate(directory: Path, controller: tuple[str, list[int]],
             trove: tuple[str, list[int]]) -> KeySet:
    """Create (or complete) the key set in `directory`; known_hosts trusts the given ports."""
    keys = KeySet.in_dir(directory)
    Path(directory).mkdir(parents=True, exist_ok=True)
    public = {}
    for name, comment in (("controller_host_key", "distbuild-controller"),
                          ("trove_host_key", "distbuild-trove"),
                          ("worker_key", "distbuild-worker"),
                          ("initiator_key", "distbuild-initiator")):
        path = getattr(keys, name)
        public[name] = (ssh.public_key_of(path) if path.exists()
                        else ssh.generate_keypair(path, comment))
    _write(keys.worker_authorized_keys, public["worker_key"].line() + "\n")
    _write(keys.initiator_authorized_keys, public["initiator_key"].line() + "\n")
    # Initiators push definitions and `trove import` pushes sources: they write to the trove.
    _write(keys.trove_authorized_keys, public["initiator_key"].line() + "\n")
    lines = [ssh.known_hosts_line(controller[0], port, public["controller_host_key"])
             for port in controller[1]]
    lines += [ssh.known_hosts_line(trove[0], port, public["trove_host_key"]) for port in trove[1]]
    _write(keys.known_hosts, "\n".join(lines) + "\n")
    if not keys.token_secret.exists():
        _write(keys.token_secret, tokens.new_secret() + "\n", private=True)
    return keys


def _write(path: Path, text: str, private: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path("keys"),
                        help="where to write the keys (default: keys/)")
    parser.add_argument("--controller-address", default="127.0.0.1",
                        help="the controller's host name or address, for known_hosts")
    parser.add_argument("--controller-ports", default="7878,3434",
                        help="initiator and worker ports (default: 7878,3434)")
    parser.add_argument("--trove-address", default="127.0.0.1")
    parser.add_argument("--trove-ssh-port", type=int, default=2222)


def run(args: argparse.Namespace) -> int:
    ports = [int(p) for p in str(args.controller_ports).split(",") if p.strip()]
    keys = generate(args.dir, (args.controller_address, ports),
                    (args.trove_address, [args.trove_ssh_port]))
    for path in (getattr(keys, f.name) for f in fields(keys)):
        print(f"{oct(path.stat().st_mode & 0o777)[2:]}  {path}")
    return 0

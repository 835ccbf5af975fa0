"""`distbuild trove`: run the trove (git daemon, artifact cache over HTTP, git over SSH).

Settings come from the `trove:` section of the shared YAML configuration, with
command-line options winning. `distbuild trove import NAME SOURCE` is the
client-side subcommand that adds a repository (see importer.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from distbuild import config
from distbuild.errors import ConfigError, TroveError
from distbuild.timestamps import service_logger

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass
class TroveSettings:
    """The `trove:` section of the configuration file."""

    git_dir: Path
    artifact_dir: Path
    listen_address: str = "127.0.0.1"
    git_port: int = 9418
    http_port: int = 8080
    ssh_port: int = 2222
    # Public keys allowed to push (OpenSSH authorized_keys format); none: no SSH server.
    authorized_keys: Path | None = None
    # The SSH host key; generated (Ed25519) on first start if the file does not exist.
    host_key: Path | None = None
    # Secret shared with the controller for upload tokens; none: uploads refused.
    token_secret_file: Path | None = None
    # Garbage collection target, e.g. "50G"; "0" keeps everything.
    cache_size_limit: str = "0"
    gc_interval: float = 60.0
    # fsync uploaded files before they become visible (crash safety over speed).
    fsync: bool = True
    # Seconds an HTTP client may send nothing before it is dropped; a stalled
    # upload's partial files go with it.
    idle_timeout: float = 300.0


def parse_size(text: str, where: str) -> int:
    """Bytes in a size such as `500M`, `10G` or `12345`; ConfigError otherwise."""
    match = _SIZE_RE.fullmatch(str(text))
    if not match:
        raise ConfigError(f"expected a size such as 500M or 10G, got {text!r}", where)
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `distbuild trove` and its `import` subcommand."""
    parser.add_argument("--config", help="configuration file (default: $DISTBUILD_CONFIG)")
    parser.add_argument("--git-dir", type=Path, help="directory of bare repositories")
    parser.add_argument("--artifact-dir", type=Path, help="directory of the artifact cache")
    parser.add_argument("--listen-address", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--git-port", type=int, help="git daemon port (0: pick a free one)")
    parser.add_argument("--http-port", type=int, help="artifact cache port (0: free one)")
    parser.add_argument("--ssh-port", type=int, help="git over SSH port (0: free one)")
    parser.add_argument("--authorized-keys", type=Path, help="keys allowed to push")
    parser.add_argument("--host-key", type=Path, help="SSH host key (created if missing)")
    parser.add_argument("--token-secret-file", type=Path, help="upload token secret")
    parser.add_argument("--cache-size-limit", help="collect garbage down to this size")
    parser.add_argument("--ready-file", type=Path,
                        help="write the ports as JSON here once everything listens")
    sub = parser.add_subparsers(dest="action", metavar="{import,token}")
    imp = sub.add_parser("import", help="add or update repository NAME on the trove from "
                         "SOURCE (git repository, directory or tarball)")
    imp.add_argument("--config", default=argparse.SUPPRESS,
                     help="client configuration file (default: $DISTBUILD_CONFIG)")
    imp.add_argument("--trove-ssh-url", help="ssh://HOST:PORT of the trove (overrides config)")
    imp.add_argument("--identity", type=Path, help="private key to push with")
    imp.add_argument("--known-hosts", type=Path, help="known_hosts file with the trove's key")
    imp.add_argument("name", help="repository name on the trove, e.g. delta/hello")
    imp.add_argument("source", help="git repository path or URL, directory, or tarball")
    tok = sub.add_parser("token", help="print an upload token for a cache key (or pin:NAME), "
                         "as the controller would issue it")
    tok.add_argument("subject", help="a cache key (64 hex digits) or pin:NAME")
    tok.add_argument("--token-secret-file", dest="secret_file", type=Path, required=True,
                     help="the secret shared by trove and controller")
    tok.add_argument("--ttl", type=float, default=3600, help="seconds it stays valid")


def settings_from(args: argparse.Namespace) -> TroveSettings:
    """The trove's settings: the config file's `trove:` section, then command-line options."""
    settings = config.component_settings(
        TroveSettings, args.config, "trove", git_dir=args.git_dir,
        artifact_dir=args.artifact_dir, listen_address=args.listen_address,
        git_port=args.git_port, http_port=args.http_port, ssh_port=args.ssh_port,
        authorized_keys=args.authorized_keys, host_key=args.host_key,
        token_secret_file=args.token_secret_file, cache_size_limit=args.cache_size_limit)
    path = config.config_path(args.config)
    where = f"{path}: trove" if path else "command line"
    parse_size(settings.cache_size_limit, f"{where}: cache_size_limit")
    if settings.authorized_keys is not None and settings.host_key is None:
        raise ConfigError("host_key is needed when authorized_keys enables the SSH server",
                          where)
    return settings


def run(args: argparse.Namespace) -> int:
    """Run the trove until SIGINT or SIGTERM, or run the `import` subcommand."""
    if args.action == "import":
        from distbuild.trove import importer
        return importer.run(args)
    if args.action == "token":
        from distbuild import tokens
        from distbuild.trove import names
        if not args.subject.startswith("pin:"):
            names.check_key(args.subject)
        print(tokens.issue(tokens.read_secret(args.secret_file), args.subject, args.ttl))
        return 0
    settings = settings_from(args)
    return serve(settings, args.ready_file)


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


_log = service_logger("trove")


def serve(settings: TroveSettings, ready_file: Path | None = None) -> int:
    """Start every part of the trove and run the reactor (only `cli` calls this)."""
    from twisted.application import service
    from twisted.internet import defer, reactor, task

    from distbuild import tokens
    from distbuild.trove.gitdaemon import GitDaemonService, wait_for_port
    from distbuild.trove.http import make_site
    from distbuild.trove.store import Store

    settings.git_dir.mkdir(parents=True, exist_ok=True)
    settings.artifact_dir.mkdir(parents=True, exist_ok=True)
    # Fail now with the file named, not at the first upload or login.
    if settings.token_secret_file is not None:
        tokens.read_secret(settings.token_secret_file)
    if settings.authorized_keys is not None:
        from distbuild import ssh
        ssh.read_authorized_keys(settings.authorized_keys)
    store = Store(settings.artifact_dir, fsync=settings.fsync)
    limit = parse_size(settings.cache_size_limit, "cache_size_limit")
    address = settings.listen_address
    site = make_site(store, settings.token_secret_file, git_dir=settings.git_dir, log=_log,
                     idle_timeout=settings.idle_timeout)
    try:
        http_port = reactor.listenTCP(settings.http_port, site, interface=address)
        ssh_port = None
        if settings.authorized_keys is not None:
            from distbuild.trove.sshgit import make_factory
            ssh_port = reactor.listenTCP(
                settings.ssh_port,
                make_factory(settings.git_dir, settings.authorized_keys, settings.host_key, _log),
                interface=address)
    except OSError as e:
        raise TroveError(f"cannot listen: {e}", address) from None
    except Exception as e:  # twisted.internet.error.CannotListenError is not an OSError
        if type(e).__name__ == "CannotListenError":
            raise TroveError(f"cannot listen: {e.socketError}",
                             f"{address}:{e.port}") from None
        raise
    git_port = settings.git_port or _free_port(address)
    services = service.MultiService()
    daemon = GitDaemonService(reactor, settings.git_dir, address, git_port, _log)
    daemon.setServiceParent(services)

    def collect() -> None:
        try:
            removed = store.collect(limit)
        except OSError as e:
            # A failed pass must not stop collection for good; the next one retries.
            _log(f"garbage collection failed: {e}")
            site.cache.metrics.collected(None)
            return
        site.cache.metrics.collected(len(removed))
        if removed:
            _log(f"garbage collection removed {len(removed)} source(s); "
                 f"{store.total_size()} bytes remain")

    if limit > 0:
        task.LoopingCall(collect).start(settings.gc_interval, now=True)

    @defer.inlineCallbacks
    def announce():
        yield wait_for_port(reactor, address, git_port)
        ports = {"http_port": http_port.getHost().port, "git_port": git_port,
                 "ssh_port": ssh_port.getHost().port if ssh_port else None,
                 "pid": os.getpid(), "git_daemon_pid": daemon.pid,
                 "listen_address": address}
        _log(f"ready: {json.dumps(ports)}")
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps(ports))
            os.replace(tmp, ready_file)

    def failed(failure):
        _log(f"could not start: {failure.getErrorMessage()}")
        reactor.stop()

    reactor.callWhenRunning(services.startService)
    reactor.callWhenRunning(lambda: announce().addErrback(failed))
    reactor.addSystemEventTrigger("before", "shutdown", services.stopService)
    _log(f"starting with {json.dumps({k: str(v) for k, v in asdict(settings).items()})}")
    reactor.run()
    return 0

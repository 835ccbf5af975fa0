"""`distbuild [--controller-initiator-address=HOST] SYSTEM_MORPH [COMPONENT...]`: build and follow.

Run in a checkout of definitions. The exact state of the checkout goes to
the trove, the controller builds it, and this prints a line per event with a
UTC timestamp while every step's output lands in build-step-*.log. Exit
status 0 when built, 1 when the build failed or was cancelled; Ctrl-C
cancels the request on the controller.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from distbuild import config
from distbuild.errors import ConfigError
from distbuild.initiator import snapshot
from distbuild.initiator.logs import StepLogs
from distbuild.protocol import messages as m
from distbuild.timestamps import terminal_stamp

if TYPE_CHECKING:
    from distbuild.link import Link

LAST_LINES = 20


def say(text: str, quiet: bool = False) -> None:
    """A progress line with its time; `quiet` sends it to stderr (stdout holds data)."""
    print(f"{terminal_stamp()} {text}", flush=True, file=sys.stderr if quiet else sys.stdout)


def add_link_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="settings file (default: $DISTBUILD_CONFIG), "
                                         "e.g. the network.yaml that `distbuild up` writes")
    parser.add_argument("--controller-initiator-address", metavar="HOST")
    parser.add_argument("--controller-initiator-port", type=int, metavar="PORT")
    parser.add_argument("--identity", type=Path, help="the initiator's private key")
    parser.add_argument("--known-hosts", type=Path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_link_arguments(parser)
    parser.add_argument("system", metavar="SYSTEM_MORPH")
    parser.add_argument("components", metavar="COMPONENT", nargs="*",
                        help="build only these chunks or strata of the system")
    parser.add_argument("--initiator-step-output-dir", type=Path, default=Path("."),
                        metavar="DIR", help="where build-step-*.log files go (default: here)")
    parser.add_argument("--fetch-cached-logs", action="store_true",
                        help="also write logs of steps that were already in the cache")
    parser.add_argument("--detach", action="store_true",
                        help="submit the request and return without following it")
    parser.add_argument("--strict", action="store_true", default=None,
                        help="unknown fields in the definitions fail the build instead of "
                             "warning (also: strict_definitions in the settings)")
    parser.add_argument("--priority", choices=("high", "normal", "low"), default="normal",
                        help="served before (high) or after (low) other requests "
                             "(default: normal)")


# The keys `ssh` itself tries, in its order.
SSH_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")


def settings(args: argparse.Namespace) -> config.ClientSettings:
    """Client settings from --config and options, else from the files `ssh` uses."""
    s = config.client_settings(
        args.config, strict_definitions=getattr(args, "strict", None),
        controller_initiator_address=args.controller_initiator_address,
        controller_initiator_port=args.controller_initiator_port,
        identity=args.identity, known_hosts=args.known_hosts)
    if not s.controller_initiator_address:
        raise ConfigError("no controller given: pass --controller-initiator-address=HOST "
                          "or a --config file (such as the network.yaml from `distbuild up`)",
                          "settings")
    ssh_dir = Path.home() / ".ssh"
    if s.identity is None:
        s.identity = next((ssh_dir / n for n in SSH_IDENTITIES if (ssh_dir / n).is_file()), None)
        if s.identity is None:
            raise ConfigError(f"no identity: none of {', '.join(SSH_IDENTITIES)} is in "
                              f"{ssh_dir}; pass --identity or create a key with ssh-keygen",
                              "settings")
    if s.known_hosts is None:
        s.known_hosts = ssh_dir / "known_hosts"
    return s


def open_link(s: config.ClientSettings, quiet: bool = False) -> Link:
    """The initiator link to the controller; `quiet` sends the progress line to stderr."""
    # Imported here, not above: paramiko is most of a command's start-up, and `run`
    # takes the snapshot while it loads.
    from distbuild.link import connect

    say(f"Connecting to {s.controller_initiator_address}:{s.controller_initiator_port}",
        quiet)
    return connect(s.controller_initiator_address, s.controller_initiator_port,
                   s.identity, s.known_hosts, "initiator",
                   f"{_user()}@{_host()}")


def with_trove(s: config.ClientSettings, welcome: m.Welcome | None) -> config.ClientSettings:
    """`s` completed with the trove URLs the controller announced; the settings' own win."""
    if welcome is not None:
        for name in m.TROVE_FIELDS:
            if hasattr(s, name) and not getattr(s, name) and getattr(welcome, name):
                setattr(s, name, getattr(welcome, name))
    for name in ("trove_ssh_url", "trove_git_url"):
        if not getattr(s, name):
            raise ConfigError(f"the controller did not say where its trove is ({name}) and "
                              "the settings do not either: set trove_ssh_url and "
                              "trove_git_url in the controller's settings or in a --config "
                              "file", "settings")
    return s


def run(args: argparse.Namespace) -> int:
    s = settings(args)
    prepared = _Prepared(args, s)
    try:
        import distbuild.link  # noqa: F401  (loads while the snapshot is taken)

        snap, system = prepared.snapshot()
        link = open_link(s)
    except BaseException:
        prepared.close()
        raise
    try:
        s = with_trove(s, link.welcome)
        repo = s.definitions_repo or "distbuild/definitions"
        with link.kept_alive():
            if not prepared.pushed():
                announced_key = link.welcome.trove_ssh_host_key if link.welcome else ""
                snapshot.push(snap, repo, s.trove_ssh_url, s.identity, s.known_hosts,
                              announced_key, s.trove_git_url, prepared.probe,
                              s.artifact_cache_url or "")
        if snap.has_changes:
            say(f"Uncommitted changes are included as commit {snap.commit[:12]} "
                f"on top of {snap.head[:12]}")
        url = f"{s.trove_git_url.rstrip('/')}/{repo}"
        say(f"Requesting build of {url} {snap.commit} {system}"
            + (f" ({', '.join(args.components)})" if args.components else ""))
        link.send(m.BuildRequest(definitions_repo=url, definitions_commit=snap.commit,
                                 system=system, components=list(args.components),
                                 fetch_cached_logs=args.fetch_cached_logs, detach=args.detach,
                                 strict=s.strict_definitions, priority=args.priority))
    except BaseException:
        link.close()
        raise
    finally:
        prepared.close()
    return Follower(link, StepLogs(args.initiator_step_output_dir), s, args).run()


class _Prepared:
    """The snapshot, the system's path in it and the trove's answer about it, made in a thread.

    They are git processes and a round trip to the trove, so they run while this
    process loads its SSH client (paramiko and cryptography: most of a cached
    rebuild's own time) and connects to the controller. Where the settings name
    the trove and known_hosts already trusts its key (as `distbuild up`'s
    network.yaml does), the push runs there too (a changed checkout's ~0.1 s):
    it needs nothing the controller's welcome says.
    """

    def __init__(self, args: argparse.Namespace, s: config.ClientSettings):
        self._args = args
        self._settings = s
        self._result: tuple[snapshot.Snapshot, str] | None = None
        self._error: BaseException | None = None
        self._taken = threading.Event()
        self._pushed = False
        self.probe: snapshot.TroveProbe | None = None
        self._thread = threading.Thread(target=self._prepare, name="snapshot", daemon=True)
        self._thread.start()

    def _prepare(self) -> None:
        try:
            snap = snapshot.take(Path.cwd(), [self._args.initiator_step_output_dir])
            system = _relative_to(Path(self._args.system), snap.top)
            snapshot.require_file(snap, system)
            self._result = snap, system
            # The settings' own trove URL and repository win over the controller's
            # welcome, so with both known the trove can be asked before connecting.
            s = self._settings
            if s.trove_git_url and s.definitions_repo:
                self.probe = snapshot.TroveProbe(
                    snap, snapshot.probe_url(s.trove_git_url, s.definitions_repo),
                    s.artifact_cache_url or "")
            self._taken.set()
            if self.probe is not None:
                self.probe.held()  # asked here, off the main thread's way
            if self.probe is not None and s.trove_ssh_url \
                    and snapshot.trove_key_known(s.trove_ssh_url, s.known_hosts):
                snapshot.push(snap, s.definitions_repo, s.trove_ssh_url, s.identity,
                              s.known_hosts, "", s.trove_git_url, self.probe,
                              s.artifact_cache_url or "")
                self._pushed = True
        except BaseException as e:  # raised again in the main thread
            self._error = e
        finally:
            self._taken.set()

    def snapshot(self) -> tuple[snapshot.Snapshot, str]:
        """The snapshot and the system's path in it, once taken (the push may go on)."""
        self._taken.wait()
        if self._result is None:
            assert self._error is not None
            raise self._error
        return self._result

    def pushed(self) -> bool:
        """Wait for the thread: whether it pushed the snapshot (raises what failed there)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._pushed

    def close(self) -> None:
        """Stop the probe if nobody asked for its answer."""
        self._thread.join()
        if self.probe is not None:
            self.probe.close()


class Follower:
    """Prints the controller's events for one request and keeps the log files."""

    def __init__(self, link: Link, logs: StepLogs, s: config.ClientSettings,
                 args: argparse.Namespace):
        self.link = link
        self.logs = logs
        self.settings = s
        self.args = args
        self.request_id = ""
        self.workers: dict[str, str] = {}
        self.log_names: dict[str, str] = {}
        self.jobs: dict[str, str] = {}  # step -> the job whose log it shows
        self.seen: dict[str, int] = {}  # job -> lines of its log written

    def run(self) -> int:
        from distbuild.initiator.attach import reconnect
        from distbuild.link import LinkError

        try:
            while True:
                try:
                    # Pinged from a thread: an initiator behind with its messages (a
                    # big build's thousands of lines, or output to a pipe nobody reads
                    # yet) answers the controller's pings late, and the controller,
                    # taking it for gone, would cancel the request it owns.
                    with self.link.kept_alive():
                        return self._follow()
                except LinkError as e:
                    if not self.request_id or self.args.detach:
                        raise
                    self.link.close()
                    link = reconnect(self, e)
                    if link is None:
                        return 1
                    self.link = link
        except KeyboardInterrupt:
            return self.cancel()
        finally:
            self.logs.close()
            self.link.close()

    def _follow(self) -> int:
        """Handle messages until one ends the request; LinkError if the link goes."""
        while True:
            status = self.handle(self.link.receive())
            if status is not None:
                return status

    def cancel(self) -> int:
        from distbuild.link import LinkError

        if not self.request_id:
            say("Interrupted")
            return 130
        say(f"Cancelling request {self.request_id}")
        try:
            self.link.send(m.CancelRequest(request_id=self.request_id))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                message = self.link.receive(timeout=1)
                if isinstance(message, (m.BuildCancelled, m.BuildFailed, m.BuildFinished)):
                    break
        except LinkError:
            pass
        say(f"Cancelled request {self.request_id}")
        return 130

    def handle(self, msg: m.Message) -> int | None:
        if isinstance(msg, m.RequestAccepted) and msg.request_id == self.request_id:
            say(f"Following request {msg.request_id} again")
        elif isinstance(msg, m.RequestAccepted):
            self.request_id = msg.request_id
            self.logs.request_id = msg.request_id
            say(f"Request ID: {msg.request_id}")
            if self.args.detach:
                say(f"Detached. Follow it with `distbuild status {msg.request_id}`; "
                    f"cancel it with `distbuild cancel {msg.request_id}`")
                return 0
            say(f"To cancel it: press Ctrl-C, or run `distbuild cancel {msg.request_id}`")
        elif isinstance(msg, m.GraphingStarted):
            say("Computing build graph")
        elif isinstance(msg, m.GraphingFinished):
            self.log_names = msg.log_names
            for warning in msg.warnings:
                print(warning, file=sys.stderr, flush=True)
            say(f"Finished computing build graph: {msg.total} steps, system cache key "
                f"{msg.system_cache_key[:12]}")
            say(f"Need to build {msg.unbuilt}/{msg.total} artifacts")
            if self.args.fetch_cached_logs:
                self._fetch_cached_logs(msg.cached)
        elif isinstance(msg, m.StepReady):
            say(f"Ready to build {msg.step}: waiting for a worker to become available")
        elif isinstance(msg, m.StepStarted) and msg.job and self.jobs.get(msg.step) == msg.job:
            pass  # the same attempt again, after reattaching: its log goes on
        elif isinstance(msg, m.StepStarted):
            self.jobs[msg.step] = msg.job
            self.workers[msg.step] = msg.worker
            path = self.logs.open(msg.step, msg.log_name)
            again = f" (attempt {msg.attempt})" if msg.attempt > 1 else ""
            self.logs.status(msg.step, f"Started building {msg.step} on {msg.worker}{again}")
            say(f"Started building {msg.step} on {msg.worker}{again}; log: {path}")
        elif isinstance(msg, m.StepOutput):
            self.logs.lines(msg.step, self._new_lines(msg))
        elif isinstance(msg, m.StepFinished):
            self.logs.status(msg.step, f"Finished building {msg.step} on {msg.worker}")
            self.logs.close(msg.step)
            say(f"Finished building {msg.step} on {msg.worker} in {msg.seconds:.1f} s")
        elif isinstance(msg, m.StepRetrying):
            self.logs.status(msg.step, f"Worker {msg.worker} was lost: {msg.reason}; "
                             "the step will run again")
            say(f"{msg.step} will run again: {msg.reason}")
        elif isinstance(msg, m.BuildProgress):
            say(f"Progress: {msg.built}/{msg.total} built")
        elif isinstance(msg, m.StepFailed):
            self._step_failed(msg)
        elif isinstance(msg, m.BuildFinished):
            say("Build finished")
            for url in msg.artifacts:
                print(f"Artifact: {url}", flush=True)
            return 0
        elif isinstance(msg, m.BuildFailed):
            say(f"Failed to build {self.args.system}: {msg.reason}")
            return 1
        elif isinstance(msg, m.BuildCancelled):
            say(f"Request {msg.request_id} was cancelled")
            return 1
        elif isinstance(msg, m.Error):
            say(f"Error from the controller: {msg.message}")
            return 1
        return None

    def _new_lines(self, msg: m.StepOutput) -> list[str]:
        """The lines of `msg` not yet written (numbered output can come again on reattach)."""
        job = self.jobs.get(msg.step, "")
        if msg.first is None or not job:
            return msg.lines
        have = self.seen.get(job, 0)
        self.seen[job] = max(have, msg.first + len(msg.lines))
        return msg.lines[max(0, have - msg.first):]

    def _step_failed(self, msg: m.StepFailed) -> None:
        self.logs.status(msg.step, f"Build of {msg.step} failed.")
        path = self.logs.path(msg.step)
        self.logs.close(msg.step)
        say(f"Failed to build {msg.step} on {msg.worker}: {msg.reason}")
        lines = msg.last_lines[-LAST_LINES:]
        if lines:
            say(f"Last {len(lines)} lines of its log:")
            for line in lines:
                print(f"    {line}", flush=True)
        if path is not None:
            say(f"Full log: {path}")

    def _fetch_cached_logs(self, cached: dict[str, str]) -> None:
        from distbuild.trove.client import CacheClient, CacheClientError

        if not self.settings.artifact_cache_url or not cached:
            return
        client = CacheClient(self.settings.artifact_cache_url)
        fetched = 0
        for step, key in cached.items():
            try:
                content = client.fetch_log(key)
            except CacheClientError as e:
                say(f"Could not fetch the cached log of {step}: {e}")
                continue
            if content is not None:
                self.logs.write_whole(step, self.log_names.get(step, f"build-step-{key}.log"),
                                      content)
                fetched += 1
        say(f"Fetched {fetched} log(s) of cached steps")


def _relative_to(system: Path, top: Path) -> str:
    full = (Path.cwd() / system).resolve()
    try:
        return str(full.relative_to(top.resolve()))
    except ValueError:
        raise ConfigError("the system morphology is not inside the definitions checkout",
                          str(system)) from None


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _host() -> str:
    import socket

    return socket.gethostname()

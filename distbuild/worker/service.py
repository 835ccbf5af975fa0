"""`distbuild worker`: connects to the controller and runs the steps it is given.

The worker keeps one link to the controller (reconnecting with back-off when
it drops) and runs up to `slots` steps at once, each in its own thread with
its own cancel token. Log lines go to the controller in small batches as they
come; artifacts go to the trove's cache with the upload credential the
controller issued for that step. When the link drops, running steps are
cancelled: the controller has already queued them again elsewhere.
"""

from __future__ import annotations

import argparse
import platform
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from distbuild import config
from distbuild.definitions import node_from_dict
from distbuild.errors import DistbuildError
from distbuild.link import Link, LinkError, connect
from distbuild.protocol import messages as m
from distbuild.runprocess import Cancelled, CancelToken
from distbuild.timestamps import service_logger
from distbuild.trove.client import CacheClient
from distbuild.worker.cache import LocalArtifactCache
from distbuild.worker.errors import CommandFailed
from distbuild.worker.remote import TroveArtifactSource, upload
from distbuild.worker.sources import GitSources
from distbuild.worker.step import StepRunner, WorkerSettings

FLUSH_SECONDS = 0.2
FLUSH_LINES = 200


def host_arch() -> str:
    """This machine's arch in definitions' terms."""
    machine = platform.machine()
    return {"x86_64": "x86_64", "i686": "x86_32", "aarch64": "armv8l64",
            "armv7l": "armv7lhf", "ppc64": "ppc64"}.get(machine, machine)


@dataclass
class WorkerConfig:
    """The `worker:` section of the configuration file."""

    name: str
    controller_address: str
    identity: Path
    known_hosts: Path
    work_dir: Path
    controller_port: int = 3434
    slots: int = 1
    arch: str = ""
    jobs: int | None = None
    staging_over_host: bool = False
    bwrap: str = "bwrap"
    cache_limit_mb: int | None = None


class Worker:
    """One worker process: the link loop and the running jobs."""

    def __init__(self, cfg: WorkerConfig, log=None):
        self.cfg = cfg
        self.log = log or _log
        # The worker's own key must never be readable by the builds it runs.
        self.settings = WorkerSettings(work_dir=cfg.work_dir, jobs=cfg.jobs,
                                       staging_over_host=cfg.staging_over_host, bwrap=cfg.bwrap,
                                       hide_from_builds=[cfg.identity],
                                       cache_limit_mb=cfg.cache_limit_mb)
        self.settings.clean()
        self.sources = GitSources(cfg.work_dir / "mirrors")
        self.jobs: dict[str, CancelToken] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def serve(self) -> None:
        """Keep a link to the controller until stopped."""
        delay = 1.0
        while not self.stopping.is_set():
            try:
                link = connect(self.cfg.controller_address, self.cfg.controller_port,
                               self.cfg.identity, self.cfg.known_hosts, "worker", self.cfg.name)
            except LinkError as e:
                if not e.retryable:
                    raise
                self.log(f"cannot reach the controller ({e}); retrying in {delay:.0f} s")
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 1.0
            arch = self.cfg.arch or host_arch()
            self.log(f"connected to {link.peer} as {self.cfg.name} ({arch}, "
                     f"{self.cfg.slots} slot(s))")
            try:
                link.send(m.WorkerReady(arch=arch, slots=self.cfg.slots))
                self._listen(link)
            except LinkError as e:
                self.log(f"lost the controller: {e}")
            finally:
                self._cancel_all()
                link.close()

    def _listen(self, link: Link) -> None:
        while not self.stopping.is_set():
            message = link.receive(timeout=0.5)
            if isinstance(message, m.JobRun):
                token = CancelToken()
                with self.lock:
                    self.jobs[message.job] = token
                threading.Thread(target=self._run_job, args=(link, message, token),
                                 name=f"job-{message.job}", daemon=True).start()
            elif isinstance(message, m.JobCancel):
                with self.lock:
                    token = self.jobs.get(message.job)
                if token is not None:
                    self.log(f"job {message.job}: cancelled by the controller")
                    token.cancel()
            elif isinstance(message, m.Refused):
                raise DistbuildError(f"refused: {message.reason}", link.peer)

    def _cancel_all(self) -> None:
        with self.lock:
            for token in self.jobs.values():
                token.cancel()

    def _run_job(self, link: Link, run: m.JobRun, token: CancelToken) -> None:
        out = _Batcher(link, run.job)
        try:
            node = node_from_dict(run.step)
            nodes = {d["id"]: node_from_dict(d) for d in run.closure}
            nodes[node.id] = node
            client = CacheClient(run.artifact_cache_url)
            cache = LocalArtifactCache(self.cfg.work_dir / "artifacts",
                                       TroveArtifactSource(client))
            runner = StepRunner(self.settings, self.sources, cache)
            self.log(f"job {run.job}: building {node.id}")
            result = runner.run(node, nodes, on_line=out.line, cancel=token)
            out.flush()
            token.check("upload")
            upload(result, client, run.token)
            link.send(m.JobFinished(job=run.job, seconds=round(result.seconds, 4),
                                    command_seconds=round(result.command_seconds, 4),
                                    artifacts={a.filename: {"sha256": a.sha256, "size": a.size}
                                               for a in result.artifacts}))
            self.log(f"job {run.job}: built {node.id} in {result.seconds:.1f} s")
        except Cancelled:
            out.flush()
            link.send(m.JobFailed(job=run.job, reason="cancelled", cancelled=True))
        except CommandFailed as e:
            out.flush()
            link.send(m.JobFailed(job=run.job, reason=e.what.splitlines()[0],
                                  exit_code=e.status, last_lines=list(e.last_lines)))
        except DistbuildError as e:
            out.flush()
            self.log(f"job {run.job}: failed: {e}")
            link.send(m.JobFailed(job=run.job, reason=str(e).splitlines()[0]))
        except LinkError:
            pass  # the link loop notices and reconnects
        except Exception as e:  # a bug: report it rather than leave the step hanging
            self.log(f"job {run.job}: internal error: {e!r}")
            try:
                link.send(m.JobFailed(job=run.job, reason=f"internal worker error: {e!r}"))
            except LinkError:
                pass
        finally:
            out.stop()
            with self.lock:
                self.jobs.pop(run.job, None)


class _Batcher:
    """Collects a job's log lines and sends them every FLUSH_SECONDS or FLUSH_LINES."""

    def __init__(self, link: Link, job: str):
        self.link = link
        self.job = job
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def line(self, text: str) -> None:
        with self.lock:
            self.lines.append(text)
            full = len(self.lines) >= FLUSH_LINES
        if full:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            lines, self.lines = self.lines, []
        if lines:
            try:
                self.link.send(m.JobOutput(job=self.job, lines=lines))
            except LinkError:
                pass

    def _loop(self) -> None:
        while not self.done.wait(FLUSH_SECONDS):
            self.flush()

    def stop(self) -> None:
        self.done.set()
        self.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="configuration file (default: $DISTBUILD_CONFIG); "
                                         "the worker reads its `worker:` section")
    parser.add_argument("--name")
    parser.add_argument("--controller-address")
    parser.add_argument("--controller-port", type=int)
    parser.add_argument("--identity", type=Path)
    parser.add_argument("--known-hosts", type=Path)
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--slots", type=int)


def run(args: argparse.Namespace) -> int:
    cfg = config.component_settings(
        WorkerConfig, args.config, "worker", name=args.name,
        controller_address=args.controller_address, controller_port=args.controller_port,
        identity=args.identity, known_hosts=args.known_hosts, work_dir=args.work_dir,
        slots=args.slots)
    worker = Worker(cfg)

    def stop(signum, frame):
        worker.log("stopping")
        worker.stopping.set()
        worker._cancel_all()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.serve()
    return 0


_log = service_logger("worker")

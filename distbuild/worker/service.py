"""`distbuild worker`: connects to the controller and runs the steps it is given.

The worker keeps one link to the controller (reconnecting with back-off when
it drops) and runs up to `slots` steps at once, each in its own thread with
its own cancel token. Log lines go to the controller in small batches as they
come; artifacts go to the trove's cache with the upload credential the
controller issued for that step. When the link drops, running steps go on:
on reconnecting the worker lists what it holds and the controller keeps
(job-adopt) or cancels each. SIGTERM drains: no new steps, running ones get
`drain_seconds`, then are handed back to run elsewhere (docs/worker.md).
"""

from __future__ import annotations

import argparse
import platform
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from distbuild import config
from distbuild.errors import DistbuildError
from distbuild.link import Link, LinkError, connect, worth_retrying
from distbuild.protocol import messages as m
from distbuild.runprocess import Cancelled
from distbuild.timestamps import service_logger
from distbuild.trove.client import CacheClient
from distbuild.worker.cache import LocalArtifactCache
from distbuild.worker.errors import CommandFailed
from distbuild.worker.jobs import HeldJob, JobTable
from distbuild.worker.nodes import NodeCache
from distbuild.worker.prefetch import Prefetcher
from distbuild.worker.remote import TroveArtifactSource, records_in_one_query, upload, upload_size
from distbuild.worker.sources import GitSources
from distbuild.worker.step import StepResult, StepRunner, WorkerSettings
from distbuild.worker.verify import compare


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
    # Shown by `distbuild workers` and the dashboard (e.g. "fast-disk"); not used to schedule.
    labels: list[str] = field(default_factory=list)
    jobs: int | None = None
    # Announced when it joins; the controller's step_labels decide which steps need which.
    labels: list[str] = field(default_factory=list)
    staging_over_host: bool = False
    bwrap: str = "bwrap"
    cache_limit_mb: int | None = None
    # Fetch artifacts the controller hints queued steps will stage (docs/worker.md).
    prefetch: bool = True
    # On SIGTERM, how long running steps may take to finish before they are handed back.
    drain_seconds: float = 300.0


class Worker:
    """One worker process: the link loop, the running jobs and a graceful stop."""

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
        spools = cfg.work_dir / "jobs"
        shutil.rmtree(spools, ignore_errors=True)  # a new process holds no jobs
        self.table = JobTable(spools, self.log)
        self.stopping = threading.Event()  # set by the first SIGTERM: drain
        self.stop_now = threading.Event()  # set by the second: hand back at once
        self.drain_deadline = 0.0
        self._announced: Link | None = None
        self.nodes = NodeCache()
        self.prefetch = Prefetcher(cfg.work_dir / "artifacts", cfg.cache_limit_mb, self.log)
        self._handlers = {m.JobRun: self._on_run, m.JobCancel: self._on_cancel,
                          m.JobAdopt: self._on_adopt, m.Refused: self._on_refused,
                          m.ArtifactPrefetch: lambda link, msg: self.prefetch.add(
                              msg.artifact_cache_url, msg.artifacts)}

    def drain(self) -> None:
        """Take no new steps; hand back what still runs after `drain_seconds` (twice: now)."""
        if self.stopping.is_set():
            self.stop_now.set()
            return
        self.drain_deadline = time.monotonic() + self.cfg.drain_seconds
        self.stopping.set()

    def serve(self) -> None:
        """Keep a link to the controller until drained; steps run on while it is away."""
        delay = 1.0
        try:
            while not self._drained_offline():
                try:
                    link = connect(self.cfg.controller_address, self.cfg.controller_port,
                                   self.cfg.identity, self.cfg.known_hosts, "worker",
                                   self.cfg.name)
                except LinkError as e:
                    if not worth_retrying(e):
                        raise
                    wait = delay * random.uniform(0.5, 1.0)
                    self.log(f"cannot reach the controller ({e.what}); retrying in {wait:.1f} s"
                             + self._holding())
                    self.stop_now.wait(wait)
                    delay = min(delay * 2, 10.0)
                    continue
                delay = 1.0
                if self._session(link):
                    return
        finally:
            self.prefetch.stop()
            for held in self.table.running():
                held.token.cancel()
            self.table.stop()

    def _session(self, link: Link) -> bool:
        """One link's life; True once drained."""
        arch = self.cfg.arch or host_arch()
        held = self.table.held()
        self.log(f"connected to {link.peer} as {self.cfg.name} ({arch}, "
                 f"{self.cfg.slots} slot(s))" + (f"; holding {', '.join(held)}" if held else ""))
        try:
            link.send(m.WorkerReady(arch=arch, slots=self.cfg.slots, held=held,
                                    labels=list(self.cfg.labels), prefetch=self.cfg.prefetch))
            while True:
                message = link.receive(timeout=0.5)
                if message is not None:
                    handler = self._handlers.get(type(message))
                    if handler is not None:
                        handler(link, message)
                if self.stopping.is_set() and self._drain_tick(link):
                    return True
        except LinkError as e:
            self.log(f"lost the controller: {e.what}" + self._holding())
            return False
        finally:
            self.table.link_lost()
            link.close()

    def _holding(self) -> str:
        running = [h.job for h in self.table.running()]
        return f"; steps {', '.join(running)} go on meanwhile" if running else ""

    # -- messages from the controller ------------------------------------------------------

    def _on_run(self, link: Link, run: m.JobRun) -> None:
        if self.stopping.is_set():
            link.send(m.JobHandedBack(job=run.job, reason=f"worker {self.cfg.name} is stopping"))
            return
        held = self.table.add(run.job, link)
        held.thread = threading.Thread(target=self._run_job, args=(run, held),
                                       name=f"job-{run.job}", daemon=True)
        held.thread.start()

    def _on_cancel(self, link: Link, msg: m.JobCancel) -> None:
        held = self.table.get(msg.job)
        if held is None:
            return
        if held.running:
            self.log(f"job {msg.job}: cancelled by the controller")
            held.token.cancel()
        else:
            self.table.forget(msg.job)  # ended; the controller needs no result

    def _on_adopt(self, link: Link, msg: m.JobAdopt) -> None:
        if self.table.adopt(msg.job, link, msg.lines):
            self.log(f"job {msg.job}: kept by the controller (its log from line {msg.lines})")
        else:
            link.send(m.JobHandedBack(job=msg.job, reason="the worker no longer holds this job"))

    def _on_refused(self, link: Link, msg: m.Refused) -> None:
        raise DistbuildError(f"refused: {msg.reason}", link.peer)

    # -- stopping --------------------------------------------------------------------------

    def _drain_tick(self, link: Link) -> bool:
        """While draining: say so once per link; hand back at the deadline; True when done."""
        running = self.table.running()
        if self._announced is not link:
            self._announced = link
            left = max(0.0, self.drain_deadline - time.monotonic())
            self.log(f"draining: no new steps; {len(running)} running may take {left:.0f} s")
            link.send(m.WorkerDraining(seconds=round(left, 1)))
        if running and (self.stop_now.is_set() or time.monotonic() >= self.drain_deadline):
            why = "stopped at once" if self.stop_now.is_set() else (
                f"drain time of {self.cfg.drain_seconds:g} s ran out")
            for held in running:
                held.handed_back = True
                held.token.cancel()
                link.send(m.JobHandedBack(job=held.job,
                                          reason=f"worker {self.cfg.name} stopped: {why}"))
                self.log(f"job {held.job}: handed back ({why})")
            for held in running:
                if held.thread is not None:
                    held.thread.join(timeout=5)
            running = []
        return not running and self.table.sent_everything()

    def _drained_offline(self) -> bool:
        """Stopping with no controller to tell: done once nothing runs (or time ran out)."""
        if not self.stopping.is_set():
            return False
        running = self.table.running()
        if running and (self.stop_now.is_set() or time.monotonic() >= self.drain_deadline):
            for held in running:
                held.handed_back = True
                held.token.cancel()
            self.log("stopping with steps unreported: the controller will run them again")
            return True
        return not running and not self.table.unreported()

    # -- one job ---------------------------------------------------------------------------

    def _run_job(self, run: m.JobRun, held: HeldJob) -> None:
        token = held.token
        result: m.Message | None = None
        try:
            node, nodes = self.nodes.graph(run.step, run.closure)
            client = CacheClient(run.artifact_cache_url)
            source = TroveArtifactSource(client)
            cache = LocalArtifactCache(self.cfg.work_dir / "artifacts", source)
            runner = StepRunner(self.settings, self.sources, cache)
            records_in_one_query(source, cache, node, nodes)
            self.log(f"job {run.job}: {'verifying' if run.verify else 'building'} {node.id}")
            built = runner.run(node, nodes, on_line=lambda text: self.table.line(held, text),
                               cancel=token, keep=not run.verify)
            if run.verify:
                result = verified(run.job, built, source, cache)
                return
            token.check("upload")
            stored = upload(built, client, run.token)
            result = m.JobFinished(job=run.job, seconds=round(built.seconds, 4),
                                   receipt=stored.receipt,
                                   command_seconds=round(built.command_seconds, 4),
                                   fetched_bytes=cache.downloaded_bytes,
                                   sent_bytes=upload_size(built),
                                   artifacts={a.filename: {"sha256": a.sha256, "size": a.size}
                                              for a in built.artifacts})
            self.log(f"job {run.job}: built {node.id} in {built.seconds:.1f} s")
        except Cancelled:
            result = m.JobFailed(job=run.job, reason="cancelled", cancelled=True)
        except CommandFailed as e:
            result = m.JobFailed(job=run.job, reason=e.what.splitlines()[0],
                                 exit_code=e.status, last_lines=_short(e.last_lines))
        except DistbuildError as e:
            self.log(f"job {run.job}: failed: {e}")
            result = m.JobFailed(job=run.job, reason=_short([str(e).splitlines()[0]])[0])
        except Exception as e:  # a bug: report it rather than leave the step hanging
            self.log(f"job {run.job}: internal error: {e!r}")
            result = m.JobFailed(job=run.job, reason=f"internal worker error: {e!r}")
        finally:
            # A handed-back job is the controller's to run again: it owes nothing.
            self.table.finish(held, None if held.handed_back else result)


def verified(job: str, built: StepResult, source: TroveArtifactSource,
             cache: LocalArtifactCache) -> m.JobVerified:
    """The answer to a verify job: the rebuilt artifacts and how they differ from the stored."""
    stored = {a.filename: source.info(a.filename) for a in built.artifacts}
    return m.JobVerified(job=job, seconds=round(built.seconds, 4),
                         artifacts={a.filename: {"sha256": a.sha256, "size": a.size}
                                    for a in built.artifacts},
                         differences=compare(built.artifacts, stored, cache))


def _short(lines, width: int = 2000) -> list[str]:
    """Failure report lines, each cut to `width` characters."""
    return [line if len(line) <= width else line[:width] + " [cut]" for line in lines]


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
        worker.log("stopping at once" if worker.stopping.is_set() else
                   f"stopping: draining for up to {cfg.drain_seconds:g} s "
                   "(signal again to stop at once)")
        worker.drain()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.serve()
    return 0


_log = service_logger("worker")

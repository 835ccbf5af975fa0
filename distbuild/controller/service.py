"""`distbuild controller`: the Twisted service that runs a distbuild network's builds.

For each request it reads the definitions commit from the trove, computes the
graph, asks the cache once which steps exist, and lets the scheduler hand the
rest to workers. Blocking work (git, the cache's HTTP API) runs in threads;
every decision is made on the reactor thread by the pure Scheduler.

This module is the entry point: settings, command line and the listening
ports. `core` holds the controller's state and its dispatch tables,
`requests` the initiator messages, `jobs` the worker messages and `events`
what each scheduler event turns into.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from dataclasses import asdict
from pathlib import Path

from distbuild import config
from distbuild.controller.settings import ControllerSettings
from distbuild.errors import ConfigError
from distbuild.timestamps import service_logger

__all__ = ["ControllerSettings", "add_arguments", "run", "serve", "settings_from"]


# -- command line --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="configuration file (default: $DISTBUILD_CONFIG); "
                                         "the controller reads its `controller:` section")
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--listen-address")
    parser.add_argument("--initiator-port", type=int)
    parser.add_argument("--worker-port", type=int)
    parser.add_argument("--dashboard-address")
    parser.add_argument("--dashboard-port", type=int)
    parser.add_argument("--trove-git-url")
    parser.add_argument("--artifact-cache-url")
    parser.add_argument("--ready-file", type=Path,
                        help="write the listening ports here as JSON once ready")


def settings_from(args: argparse.Namespace) -> ControllerSettings:
    """The `controller:` section of the configuration file, then command-line options."""
    return config.component_settings(
        ControllerSettings, args.config, "controller", state_dir=args.state_dir,
        listen_address=args.listen_address, initiator_port=args.initiator_port,
        worker_port=args.worker_port, trove_git_url=args.trove_git_url,
        dashboard_address=args.dashboard_address, dashboard_port=args.dashboard_port,
        artifact_cache_url=args.artifact_cache_url)


def run(args: argparse.Namespace) -> int:
    return serve(settings_from(args), args.ready_file)


_log = service_logger("controller")


def serve(settings: ControllerSettings, ready_file: Path | None = None) -> int:
    """Listen for initiators and workers and run the reactor (only `cli` calls this)."""
    from twisted.internet import error, reactor

    from distbuild.controller.checkpoints import Checkpointer
    from distbuild.controller.core import Controller
    from distbuild.controller.dashboard import listen as listen_dashboard
    from distbuild.controller.labels import LabelWaits
    from distbuild.controller.links import link_factory
    from distbuild.controller.restart import resume

    if os.environ.get("DISTBUILD_TURN_TRACE"):  # benchmarks/controller_bench.py
        from distbuild.controller.turntrace import install

        install(reactor, os.environ["DISTBUILD_TURN_TRACE"])
    controller = Controller(settings, reactor)
    checkpointer = Checkpointer(controller.state.path, log=_log)
    controller.state.checkpoint_elsewhere()
    checkpointer.start()
    dashboard_port = listen_dashboard(controller, reactor)
    resume(controller)
    LabelWaits(controller).start()
    controller.verifier.start()
    controller.schedules.start()
    reactor.suggestThreadPoolSize(8)
    ports = {}
    for role, port, keys in (
            ("initiator", settings.initiator_port, settings.initiator_authorized_keys),
            ("worker", settings.worker_port, settings.worker_authorized_keys)):
        factory = link_factory(role, controller, settings.host_key, keys, reactor,
                               settings.dead_after, trove=asdict(settings))
        try:
            listening = reactor.listenTCP(port, factory, interface=settings.listen_address)
        except error.CannotListenError as e:
            raise ConfigError(f"cannot listen for {role}s: {e.socketError}",
                              f"{settings.listen_address}:{port}") from None
        ports[f"{role}_port"] = listening.getHost().port

    address = settings.dashboard_address
    host = f"[{address}]" if ":" in address else address

    def announce() -> None:
        info = {**ports, "pid": os.getpid(), "listen_address": settings.listen_address,
                "dashboard_port": dashboard_port,
                "dashboard_url": f"http://{host}:{dashboard_port}/"}
        _log(f"ready: {json.dumps(info)}")
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, ready_file)

    # Modules, classes and settings live as long as the process: keep them out of
    # the cyclic collector's full passes, which otherwise stall the reactor longer.
    gc.freeze()
    reactor.callWhenRunning(announce)
    reactor.addSystemEventTrigger("before", "shutdown", checkpointer.stop)
    reactor.addSystemEventTrigger("before", "shutdown", controller.state.close)
    reactor.addSystemEventTrigger("before", "shutdown", controller.logs.close_all)
    _log(f"starting with {json.dumps({k: str(v) for k, v in asdict(settings).items()})}")
    reactor.run()
    return 0

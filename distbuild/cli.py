"""Command-line entry point: picks a command and runs it.

Commands live in their own modules and are imported only when chosen, so a
quick command such as `distbuild graph` does not pay for importing Twisted.
This is the only module that may start a reactor (through the command it
runs). Every DistbuildError becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from distbuild import __version__
from distbuild.errors import DistbuildError

# name -> (module[:object], one-line help). The module (or the object in it) has
# add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("distbuild.initiator.build", "build a system of this definitions checkout "
              "(the default command)"),
    "status": ("distbuild.initiator.requests:Status", "show one build request"),
    "list": ("distbuild.initiator.requests:List", "list build requests"),
    "cancel": ("distbuild.initiator.requests:Cancel", "cancel a build request"),
    "workers": ("distbuild.initiator.farm:Workers",
                "list the workers: slots, running steps, last heartbeat"),
    "queue": ("distbuild.initiator.farm:Queue",
              "list the ready steps in the order they will run, and why each waits"),
    "attach": ("distbuild.initiator.attach", "follow a running build request again"),
    "log": ("distbuild.initiator.steplog", "print the log of one step of a build request"),
    "schedule": ("distbuild.initiator.schedule", "add, list, remove or run scheduled builds "
                 "(schedule add NAME SYSTEM --branch B --every 6h)"),
    "verify": ("distbuild.initiator.verify", "build steps of a request again on another "
               "worker and compare their artifacts"),
    "graph": ("distbuild.definitions.command", "show the build graph of a system"),
    "trove": ("distbuild.trove.service", "run the trove (git server and artifact cache); "
              "`trove import` adds a repository"),
    "controller": ("distbuild.controller.service", "run the controller"),
    "worker": ("distbuild.worker.service", "run a worker that builds steps for a controller"),
    "up": ("distbuild.network", "start a whole network on this machine (trove, controller, "
           "workers)"),
    "build-step": ("distbuild.worker.command",
                   "build one chunk, stratum or system here, as a worker would"),
    "keygen": ("distbuild.keygen", "write a network's SSH keys, known_hosts and token secret"),
    "deploy": ("distbuild.deploy.command", "deploy built systems as a cluster morphology says"),
}

# Used when the first argument is not a command name: `distbuild [options] SYSTEM`.
DEFAULT_COMMAND = "build"

# The commands that ask the controller and print its answer: once they return,
# their files are closed and nothing is left to do but the interpreter's own
# teardown of every module and object (paramiko, cryptography, the protocol's
# classes), which took 0.05-0.15 s here: a third of a fully cached rebuild.
QUICK_EXIT = frozenset({"build", "status", "list", "cancel", "workers", "queue", "attach",
                        "log", "schedule", "verify"})


def unknown_command(word: str) -> str | None:
    """Why `word`, taken as the system to build, is really a mistyped command; else None.

    A first positional that neither ends in .morph nor exists as a file names a
    command, so `distbuild stauts ID` submits nothing. COMMANDS is the one list
    the suggestion comes from.
    """
    if word.endswith(".morph") or Path(word).exists():
        return None
    import difflib  # here: only a mistyped command pays for it

    close = difflib.get_close_matches(word, list(COMMANDS), n=1)
    if close:
        return f"unknown command '{word}'; did you mean '{close[0]}'?"
    return f"unknown command '{word}' (run `distbuild --help` for the commands)"


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: distbuild COMMAND [options]",
        "       distbuild --controller-initiator-address=HOST SYSTEM_MORPH [COMPONENT...]",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `distbuild COMMAND --help` for a command's options."]
    return "\n".join(lines)


def run_and_exit() -> NoReturn:
    """`main()` as the process: a QUICK_EXIT command ends it at once, output flushed."""
    status = main()
    args = sys.argv[1:]
    command = args[0] if args and args[0] in COMMANDS else DEFAULT_COMMAND
    if command in QUICK_EXIT and args and args[0] not in ("-h", "--help", "--version"):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can reach it
                pass
        os._exit(status)
    sys.exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the distbuild command line; returns the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_top_help())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"distbuild {__version__}")
        return 0
    if args[0] in COMMANDS:
        name, rest = args[0], args[1:]
    else:
        name, rest = DEFAULT_COMMAND, args
    target, help_ = COMMANDS[name]
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    if attr:
        module = getattr(module, attr)
    prog = "distbuild" if name == DEFAULT_COMMAND and args[0] != name else f"distbuild {name}"
    parser = argparse.ArgumentParser(prog=prog, description=help_)
    module.add_arguments(parser)
    if name != args[0]:
        known, _ = parser.parse_known_args(rest)
        why = unknown_command(known.system)
        if why:
            print(f"distbuild: error: {why}", file=sys.stderr)
            return 2
    parsed = parser.parse_args(rest)
    try:
        return int(module.run(parsed) or 0)
    except DistbuildError as e:
        print(f"distbuild: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distbuild: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1

"""`distbuild schedule add|list|remove|run`: builds the controller starts on its own."""

from __future__ import annotations

import argparse
import time

from distbuild.initiator.build import add_link_arguments, say
from distbuild.initiator.requests import ask
from distbuild.protocol import messages as m


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="build SYSTEM from the tip of BRANCH on a schedule")
    add.add_argument("name", metavar="NAME")
    add.add_argument("system", metavar="SYSTEM", help="e.g. systems/base-x86_64.morph")
    add.add_argument("--branch", required=True, help="branch of the definitions repository")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", metavar="DURATION", help="e.g. 6h, 90m, 1h30m, 30s")
    when.add_argument("--cron", metavar="EXPR", help="five fields, in UTC: '0 3 * * *'")
    add.add_argument("--definitions", metavar="REPO", default="",
                     help="repository on the trove (default: the controller's)")
    add.add_argument("--always", action="store_true",
                     help="build even when nothing changed since the last successful run")
    sub.add_parser("list", help="list schedules")
    remove = sub.add_parser("remove", help="remove a schedule")
    remove.add_argument("name", metavar="NAME")
    run_now = sub.add_parser("run", help="run a schedule now")
    run_now.add_argument("name", metavar="NAME")
    for p in sub.choices.values():
        add_link_arguments(p)


QUESTIONS = {
    "add": lambda a: m.ScheduleAdd(name=a.name, system=a.system, branch=a.branch,
                                   every=a.every or "", cron=a.cron or "",
                                   definitions_repo=a.definitions, always=a.always),
    "list": lambda a: m.ScheduleList(),
    "remove": lambda a: m.ScheduleRemove(name=a.name),
    "run": lambda a: m.ScheduleRun(name=a.name),
}


def run(args: argparse.Namespace) -> int:
    answer = ask(args, QUESTIONS[args.action](args))
    if not isinstance(answer, m.ScheduleReply):
        say(getattr(answer, "message", f"unexpected answer {answer.type}"), quiet=True)
        return 1
    if answer.message:
        say(answer.message, quiet=args.action == "list")
    if args.action == "run" and answer.request_id:
        print(f"Request ID: {answer.request_id}")
    if args.action == "list":
        if not answer.schedules:
            print("No schedules.")
        for s in answer.schedules:
            print(line(s))
    return 0


def line(s: dict) -> str:
    """One schedule as `distbuild schedule list` shows it."""
    last = f"last run {s['last_request']} {s['last_state'] or ''}".rstrip() \
        if s["last_request"] else "not run yet"
    nxt = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s["next"]))
    return (f"{s['name']}  {s['system']} on {s['branch']}  {s['timing']}"
            f"{'  always' if s['always'] else ''}  next {nxt} UTC  {last}"
            + (f"  (error: {s['last_error']})" if s["last_error"] else ""))

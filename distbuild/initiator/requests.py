"""`distbuild status ID`, `distbuild list` and `distbuild cancel ID`."""

from __future__ import annotations

import argparse
import json
import time

from distbuild.initiator.build import add_link_arguments, open_link, say, settings
from distbuild.link import Link
from distbuild.protocol import messages as m


def _ask(args: argparse.Namespace, question: m.Message) -> m.Message:
    # Progress goes to stderr: stdout holds the answer (`status --json` is only JSON).
    link: Link = open_link(settings(args), quiet=True)
    try:
        link.send(question)
        while True:
            answer = link.receive(timeout=30)
            if answer is None:
                return m.Error(message="the controller did not answer within 30 s")
            if not isinstance(answer, (m.StepOutput, m.BuildProgress)):
                return answer
    finally:
        link.close()


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp)) if stamp else "-"


class Status:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_link_arguments(parser)
        parser.add_argument("request_id", metavar="ID")
        parser.add_argument("--json", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        answer = _ask(args, m.StatusRequest(request_id=args.request_id))
        if isinstance(answer, m.Error):
            say(answer.message, quiet=True)
            return 1
        r = answer.request
        if args.json:
            print(json.dumps(r, indent=1))
            return 0
        print(f"Request {r['id']}: {r['state']}" + (f" ({r['reason']})" if r["reason"] else ""))
        print(f"  system {r['system']} at {r['definitions_commit'][:12]}, from {r['initiator']}")
        print(f"  submitted {_when(r['created'])}, ended {_when(r['ended'])}")
        print(f"  built {r['built']} of {r['unbuilt']} to build ({r['total']} steps)")
        nodes = ", ".join(f"{n} {state}" for state, n in sorted(r["nodes"].items()))
        if nodes:
            print(f"  steps: {nodes}")
        for running in r["running"]:
            print(f"  running {running['step']} on {running['worker']}")
        for url in r["artifacts"]:
            print(f"Artifact: {url}")
        return 0


class List:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_link_arguments(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        answer = _ask(args, m.ListRequests())
        if isinstance(answer, m.Error):
            say(answer.message, quiet=True)
            return 1
        if not answer.requests:
            print("No requests.")
        for r in answer.requests:
            print(f"{r['id']}  {r['state']:<10} {_when(r['created'])}  {r['system']}  "
                  f"{r['built']}/{r['unbuilt']}")
        return 0


class Cancel:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_link_arguments(parser)
        parser.add_argument("request_id", metavar="ID")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        answer = _ask(args, m.CancelRequest(request_id=args.request_id))
        if isinstance(answer, m.BuildCancelled):
            say(f"Cancelled request {args.request_id}")
            return 0
        say(getattr(answer, "message", f"unexpected answer {answer.type}"), quiet=True)
        return 1

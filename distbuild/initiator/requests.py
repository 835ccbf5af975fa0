"""`distbuild status ID`, `distbuild list` and `distbuild cancel ID`.

With --json, status and list print only JSON on stdout (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import json

from distbuild.initiator.build import add_link_arguments, open_link, say, settings
from distbuild.initiator.tables import seconds, table, when
from distbuild.initiator.verify import describe as verify_lines
from distbuild.link import Link
from distbuild.protocol import messages as m
from distbuild.scheduling_labels import describe


def ask(args: argparse.Namespace, question: m.Message) -> m.Message:
    """Send one question to the controller; its answer (or an Error)."""
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


class Status:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_link_arguments(parser)
        parser.add_argument("request_id", metavar="ID")
        parser.add_argument("--json", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        answer = ask(args, m.StatusRequest(request_id=args.request_id))
        if isinstance(answer, m.Error):
            say(answer.message, quiet=True)
            return 1
        r = answer.request
        if args.json:
            print(json.dumps(r, indent=1))
            return 0
        print(f"Request {r['id']}: {r['state']}" + (f" ({r['reason']})" if r["reason"] else ""))
        print(f"  system {r['system']} at {r['definitions_commit'][:12]}, from {r['initiator']}"
              + (f" (schedule {r['schedule']})" if r.get("schedule") else ""))
        print(f"  submitted {when(r['created'])}, ended {when(r['ended'])}, "
              f"took {seconds(r.get('duration'))}")
        print(f"  built {r['built']} of {r['unbuilt']} to build ({r['total']} steps)")
        nodes = ", ".join(f"{n} {state}" for state, n in sorted(r["nodes"].items()))
        if nodes:
            print(f"  steps: {nodes}")
        for running in r["running"]:
            print(f"  running {running['step']} on {running['worker']}")
        for line in describe(r.get("waiting_for_labels", {})):
            print(f"  {line}")
        for check in r.get("verifications", []):
            for line in verify_lines(check):
                print(f"  verify: {line}")
        for url in r["artifacts"]:
            print(f"Artifact: {url}")
        steps = r.get("steps", [])
        if steps:
            print()
            print(table(["STEP", "STATE", "WORKER", "STARTED", "DURATION", "ATTEMPTS"],
                        [[s["step"], s["state"], s["worker"] or "-", when(s["started"]),
                          seconds(s["duration"]), s["attempts"] or "-"] for s in steps]))
        return 0


class List:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_link_arguments(parser)
        parser.add_argument("--state", default="",
                            choices=["", "graphing", "building", "finished", "failed",
                                     "cancelled"],
                            help="only requests in this state")
        parser.add_argument("--limit", type=int, default=20,
                            help="how many of the newest requests (default 20)")
        parser.add_argument("--json", action="store_true", help="print the rows as JSON only")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        if args.limit < 1:
            say("--limit must be at least 1", quiet=True)
            return 2
        answer = ask(args, m.ListRequests(state=args.state, limit=args.limit))
        if isinstance(answer, m.Error):
            say(answer.message, quiet=True)
            return 1
        if args.json:
            print(json.dumps(answer.requests, indent=1))
            return 0
        if not answer.requests:
            print("No requests" + (f" in state {args.state}." if args.state else "."))
            return 0
        header = ["ID", "STATE", "SUBMITTED", "DURATION", "BUILT", "SYSTEM"]
        rows = [[r["id"], r["state"], when(r["created"]), seconds(r.get("duration")),
                 f"{r['built']}/{r['unbuilt']}", r["system"]] for r in answer.requests]
        # A SCHEDULE column only when some request listed came from a schedule.
        if any(r.get("schedule") for r in answer.requests):
            header.append("SCHEDULE")
            for row, r in zip(rows, answer.requests, strict=True):
                row.append(r.get("schedule") or "-")
        print(table(header, rows))
        return 0


class Cancel:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_link_arguments(parser)
        parser.add_argument("request_id", metavar="ID")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        answer = ask(args, m.CancelRequest(request_id=args.request_id))
        if isinstance(answer, m.BuildCancelled):
            say(f"Cancelled request {args.request_id}")
            return 0
        say(getattr(answer, "message", f"unexpected answer {answer.type}"), quiet=True)
        return 1

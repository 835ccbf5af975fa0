"""`distbuild workers` and `distbuild queue`: what the farm is doing now.

Each prints a table with a header line, or with --json only the rows as JSON
on stdout (the same rows the dashboard's JSON API gives).
"""

from __future__ import annotations

import argparse
import json
import time

from distbuild.initiator.build import add_link_arguments, say
from distbuild.initiator.requests import ask
from distbuild.initiator.tables import seconds, table, when
from distbuild.protocol import messages as m


def _add(parser: argparse.ArgumentParser) -> None:
    add_link_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON only")


def _answer(args: argparse.Namespace, question: m.Message, kind: type) -> m.Message | None:
    answer = ask(args, question)
    if isinstance(answer, kind):
        return answer
    say(getattr(answer, "message", f"unexpected answer {answer.type}"), quiet=True)
    return None


class Workers:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        _add(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        answer = _answer(args, m.WorkersRequest(), m.WorkerList)
        if answer is None:
            return 1
        if args.json:
            print(json.dumps(answer.workers, indent=1))
            return 0
        if not answer.workers:
            print("No workers.")
            return 0
        now = time.time()
        rows = []
        for w in answer.workers:
            steps = ", ".join(f"{s['step']} ({seconds(s['seconds'])})" for s in w["steps"])
            heard = seconds(now - w["last_heartbeat"]) + " ago" if w["last_heartbeat"] else "-"
            rows.append([w["name"], w["state"], w["arch"], ",".join(w["labels"]) or "-",
                         f"{w['busy']}/{w['slots']}", when(w["connected_since"]), heard,
                         steps or "-"])
        print(table(["NAME", "STATE", "ARCH", "LABELS", "SLOTS", "CONNECTED SINCE",
                     "LAST HEARD", "RUNNING"], rows))
        return 0


class Queue:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        _add(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        answer = _answer(args, m.QueueRequest(), m.QueueReply)
        if answer is None:
            return 1
        if args.json:
            print(json.dumps({"ready": answer.ready, "waiting": answer.waiting}, indent=1))
            return 0
        if answer.ready:
            print(table(["#", "STEP", "ARCH", "REQUEST", "WHY IT WAITS"],
                        [[r["position"], r["step"], r["arch"], r["request"], r["reason"]]
                         for r in answer.ready]))
        else:
            print("No step is ready to run.")
        if answer.waiting:
            print(f"\n{len(answer.waiting)} step(s) wait on dependencies:")
            print(table(["STEP", "REQUEST", "WHY IT WAITS"],
                        [[w["step"], w["request"], w["reason"]] for w in answer.waiting]))
        return 0

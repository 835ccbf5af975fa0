"""`distbuild verify ID [STEP...]`: build steps of a request again elsewhere and compare."""

from __future__ import annotations

import argparse
from typing import Any

from distbuild.initiator.build import add_link_arguments, open_link, say, settings
from distbuild.protocol import messages as m


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_link_arguments(parser)
    parser.add_argument("request_id", metavar="ID")
    parser.add_argument("steps", nargs="*", metavar="STEP",
                        help="node ids or chunk/stratum names (default: every built step)")
    parser.add_argument("--detach", action="store_true",
                        help="queue the checks and return; `distbuild status ID` shows them")


def run(args: argparse.Namespace) -> int:
    """Exit status 0 if every step reproduced, 1 otherwise (or on an error)."""
    link = open_link(settings(args), quiet=True)
    try:
        link.send(m.VerifyRequest(request_id=args.request_id, steps=args.steps,
                                  detach=args.detach))
        answer = link.receive(timeout=60)
        if not isinstance(answer, m.VerifyAccepted):
            say(getattr(answer, "message", "the controller did not answer within 60 s"),
                quiet=True)
            return 1
        waiting = {v["id"] for v in answer.verifications}
        for v in answer.verifications:
            say(f"Verifying {v['step']} (built by {v['built_by'] or 'an unknown worker'}); "
                f"check {v['id']}", quiet=True)
        if args.detach:
            return 0
        ok = True
        while waiting:
            msg = link.receive(timeout=None)
            if isinstance(msg, m.VerifyResult) and msg.verification["id"] in waiting:
                waiting.discard(msg.verification["id"])
                ok &= msg.verification["state"] == "match"
                for line in describe(msg.verification):
                    print(line, flush=True)
        return 0 if ok else 1
    finally:
        link.close()


def describe(v: dict[str, Any]) -> list[str]:
    """A check as lines: its outcome, and for a mismatch every member that differs."""
    who = f"built by {v['built_by'] or '?'}, rebuilt by {v['verified_by'] or '?'}"
    if v["state"] == "match":
        return [f"{v['step']}: reproducible ({who})"]
    if v["state"] != "mismatch":
        return [f"{v['step']}: {v['state']} ({who})" + (f": {v['reason']}" if v["reason"]
                                                        else "")]
    lines = [f"{v['step']}: NOT reproducible ({who})"]
    for name, d in v["differences"].items():
        lines.append(f"  {name}: stored {_sha(d['stored'])}, rebuilt {_sha(d['rebuilt'])}")
        for f in d["files"]:
            lines.append(f"    {f['path']}: {v['built_by'] or 'stored'} {_entry(f['stored'])}"
                         f"; {v['verified_by']} {_entry(f['rebuilt'])}")
    return lines


def _sha(info: dict | None) -> str:
    return f"{info['sha256'][:16]} ({info['size']} bytes)" if info else "missing"


def _entry(e: dict | None) -> str:
    if e is None:
        return "absent"
    text = f"{e['type']} {e['size']} bytes sha256 {e['sha256'] or '-'} mode {e['mode']}"
    return text + (f" -> {e['target']}" if e.get("target") else "")

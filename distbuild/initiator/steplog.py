"""`distbuild log ID STEP`: print the log of one step of a request, whatever became of it.

The controller keeps every attempt's log (built, failed, cancelled, lost or
handed back) and sends the latest attempt's; a step that was already in the
artifact cache has its log fetched from there. STEP is a node id such as
chunk:STRATUM/NAME, or a chunk's or stratum's name.
"""

from __future__ import annotations

import argparse
import sys

from distbuild.initiator.build import add_link_arguments, settings
from distbuild.link import connect
from distbuild.protocol import messages as m


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_link_arguments(parser)
    parser.add_argument("request_id", metavar="ID")
    parser.add_argument("step", metavar="STEP",
                        help="a node id (chunk:STRATUM/NAME, stratum:NAME, system:NAME) or name")


def run(args: argparse.Namespace) -> int:
    s = settings(args)
    link = connect(s.controller_initiator_address, s.controller_initiator_port, s.identity,
                   s.known_hosts, "initiator", "log")
    try:
        link.send(m.LogRequest(request_id=args.request_id, step=args.step))
        while True:
            answer = link.receive(timeout=60)
            if answer is None:
                print("distbuild: error: the controller did not answer within 60 s",
                      file=sys.stderr)
                return 1
            if isinstance(answer, m.Error):
                print(f"distbuild: error: {answer.message}", file=sys.stderr)
                return 1
            if isinstance(answer, m.LogLines):
                if answer.lines:
                    sys.stdout.write("".join(line + "\n" for line in answer.lines))
                if answer.done:
                    sys.stdout.flush()
                    what = f"attempt {answer.attempt}, " if answer.attempt else ""
                    print(f"({answer.step}: {what}{answer.outcome})", file=sys.stderr)
                    return 0
    finally:
        link.close()

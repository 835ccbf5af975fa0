"""`distbuild attach ID`: follow a running request as the initiator that submitted it does.

Also how a following initiator gets back to its request when its link to
the controller drops (a controller restart, say): it reconnects with
back-off and attaches again, saying how many lines of each step's log it
has written, so the logs go on with nothing missing and nothing twice.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from distbuild.initiator.build import Follower, add_link_arguments, open_link, say, settings
from distbuild.initiator.logs import StepLogs
from distbuild.link import Link, LinkError, connect, worth_retrying
from distbuild.protocol import messages as m

# How long an initiator tries to get back to its request before giving up.
REATTACH_SECONDS = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_link_arguments(parser)
    parser.add_argument("request_id", metavar="ID")
    parser.add_argument("--initiator-step-output-dir", type=Path, default=Path("."),
                        metavar="DIR", help="where build-step-*.log files go (default: here)")


def run(args: argparse.Namespace) -> int:
    s = settings(args)
    link = open_link(s)
    link.send(m.AttachRequest(request_id=args.request_id))
    # As the submitting initiator: Ctrl-C cancels the request.
    follow_args = argparse.Namespace(system=f"request {args.request_id}", detach=False,
                                     fetch_cached_logs=False)
    return Follower(link, StepLogs(args.initiator_step_output_dir), s, follow_args).run()


def reconnect(follower: Follower, error: LinkError) -> Link | None:
    """A new link to the controller, attached to the follower's request; None if none came."""
    rid = follower.request_id
    s = follower.settings
    say(f"Lost the controller ({error.what}); reconnecting to go on following request {rid}")
    deadline = time.monotonic() + REATTACH_SECONDS
    delay = 0.5
    while True:
        try:
            link = connect(s.controller_initiator_address, s.controller_initiator_port,
                           s.identity, s.known_hosts, "initiator", f"attach-{rid}")
            link.send(m.AttachRequest(request_id=rid, seen=dict(follower.seen)))
            return link
        except LinkError as e:
            if not worth_retrying(e) or time.monotonic() + delay > deadline:
                say(f"Could not get back to the controller ({e.what}); the request goes on "
                    f"there: follow it with `distbuild attach {rid}`")
                return None
        time.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, 5.0)

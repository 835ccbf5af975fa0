"""Scheduled builds through real processes: a schedule every few seconds builds a commit
pushed to its branch after it was added, records "unchanged" for the run after, survives a
restart of the whole network, and runs once, not once per slot, for the slots it missed.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time

import pytest

from distbuild import ssh
from tests.network_process import NetworkProcess
from tests.test_durable_e2e import SYSTEM, edit, wait_for

pytestmark = pytest.mark.slow


def push(net, checkout, branch: str) -> str:
    env = {"GIT_SSH_COMMAND": ssh.git_ssh_command(net.settings["identity"],
                                                  net.settings["known_hosts"])}
    url = f"{net.settings['trove_ssh_url']}/{net.settings['definitions_repo']}"
    subprocess.run(["git", "push", "-q", url, f"HEAD:refs/heads/{branch}"], cwd=checkout,
                   check=True, capture_output=True, timeout=60, env={**net.env, **env})
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, check=True,
                          capture_output=True, text=True).stdout.strip()


def commit(checkout, marker: str) -> None:
    edit(checkout / "strata/example-apps/hello.morph", "build-commands:\n",
         f"build-commands:\n- echo {marker}\n")
    subprocess.run(["git", "commit", "-qam", marker], cwd=checkout, check=True)


def runs(net) -> list[dict]:
    db = sqlite3.connect(net.state / "controller" / "controller.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(
            "SELECT id, state, reason, definitions_commit, created FROM requests "
            "WHERE schedule='nightly' ORDER BY seq")]
    finally:
        db.close()


def created_at(net) -> float:
    db = sqlite3.connect(net.state / "controller" / "controller.db")
    try:
        return db.execute("SELECT created FROM schedules WHERE name='nightly'").fetchone()[0]
    finally:
        db.close()


def test_schedule_builds_the_new_tip_then_records_unchanged(tmp_path):
    net = NetworkProcess(tmp_path / "network", workers=2).start()
    try:
        checkout = net.checkout(tmp_path / "defs")
        push(net, checkout, "nightly")
        bad = net.client("schedule", "add", "nightly", SYSTEM, "--branch", "nope",
                         "--every", "4s")
        assert bad.returncode == 1 and "ref 'refs/heads/nope' not found" in bad.stderr
        added = net.client("schedule", "add", "nightly", SYSTEM, "--branch", "nightly",
                           "--every", "4s")
        assert added.returncode == 0, added.stderr
        commit(checkout, "scheduled-1")
        tip = push(net, checkout, "nightly")

        built = wait_for(lambda: next((r for r in runs(net) if r["definitions_commit"] == tip
                                       and r["state"] == "finished"), None), 240,
                         "a run to build the pushed commit")
        later = wait_for(lambda: next((r for r in runs(net) if r["created"] > built["created"]
                                       and r["state"] == "unchanged"), None), 60,
                         "the next run to record unchanged")
        assert later["definitions_commit"] == tip and built["id"] in later["reason"]
        listing = net.client("list").stdout
        assert listing.splitlines()[0].split()[-1] == "SCHEDULE", listing
        assert re.search(rf"^{later['id']} +unchanged .* nightly$", listing, re.M), listing
        shown = net.client("schedule", "list").stdout
        assert "nightly  systems/example-system-x86_64.morph on nightly  every 4s" in shown

        # Down for several slots: when it is back, one run, not one per missed slot.
        net.stop()
        down = time.time()
        time.sleep(13)
        net.start()
        back = time.time()
        first = wait_for(lambda: [r for r in runs(net) if r["created"] > down], 60,
                         "a run after the restart")[0]["created"]
        assert first - back < 10
        time.sleep(max(0.0, first + 6 - time.time()))
        after = [r["created"] for r in runs(net) if r["created"] > down]
        # Slots are every 4 s from when it was added; about 5 passed while it was down.
        # One run took them all: beyond it, at most one run per slot since.
        anchor = created_at(net)
        slots = [t for t in (anchor + 4 * k for k in range(int((first - anchor) // 4),
                                                              int((first + 6 - anchor) // 4) + 1))
                 if first < t <= first + 6]
        assert 1 <= len([t for t in after if t <= first + 6]) <= 1 + len(slots), (after, slots)
        assert wait_for(lambda: all(r["state"] == "unchanged"
                                    for r in runs(net) if r["created"] > down) or None, 30,
                        "the runs after the restart to end unchanged")

        gone = net.client("schedule", "remove", "nightly")
        assert gone.returncode == 0 and "No schedules." in net.client("schedule", "list").stdout
    finally:
        net.stop()

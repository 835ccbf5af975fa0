"""Scheduled builds: the `schedules` table, the timer that starts runs, and their messages.

Each second the timer looks for schedules with a slot due (distbuild.schedules
decides, and collapses missed slots into one run). A run resolves the tip of
the schedule's branch on the trove and becomes an ordinary request, recorded
with the schedule's name. A run whose system cache key is the last successful
run's ends as `unchanged` and builds nothing, unless the schedule says
`always`. A schedule does not start a run while its previous run is active:
the slot waits for it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from distbuild.controller import requests
from distbuild.errors import DistbuildError
from distbuild.protocol import messages as m
from distbuild.schedules import Timing, check_cron, check_name, due, parse_every
from distbuild.trove.refs import resolve_in

if TYPE_CHECKING:
    from distbuild.controller.core import Controller
    from distbuild.controller.requests import Plan

SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    system TEXT NOT NULL,
    branch TEXT NOT NULL,
    definitions_repo TEXT NOT NULL,
    every REAL,
    cron TEXT,
    always INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    counted_from REAL NOT NULL,
    last_request TEXT NOT NULL DEFAULT '',
    last_success TEXT NOT NULL DEFAULT '',
    last_key TEXT NOT NULL DEFAULT '',
    last_error TEXT NOT NULL DEFAULT ''
);
"""
TICK = 1.0


class Schedules:
    """The controller's schedules, kept in its database."""

    def __init__(self, ctl: Controller):
        self.ctl = ctl
        self.db = ctl.state.db
        self.db.executescript(SCHEMA)
        self.starting: set[str] = set()  # schedules whose run is resolving its branch

    def start(self) -> None:
        """Tick every TICK seconds, on the reactor (a missed slot runs at the first)."""
        from twisted.internet import task

        loop = task.LoopingCall(self.tick)
        loop.clock = self.ctl.reactor
        loop.start(TICK, now=True)

    def rows(self) -> list[dict[str, Any]]:
        """Every schedule, with its last run's state and its next slot, by name."""
        out = []
        for row in self.db.execute(
                "SELECT s.*, r.state AS last_state FROM schedules s LEFT JOIN requests r "
                "ON r.id = s.last_request ORDER BY s.name"):
            d = dict(row)
            timing = _timing(d)
            d["timing"] = timing.describe()
            d["next"] = timing.next_after(d["counted_from"])
            d["always"] = bool(d["always"])
            out.append(d)
        return out

    def tick(self) -> None:
        """Start a run of each schedule whose slot is due and whose last run is over."""
        now = time.time()
        for row in self.rows():
            if row["name"] in self.starting or row["last_state"] in ("graphing", "building"):
                continue
            if due(_timing(row), row["counted_from"], now):
                # Counted from now before it starts: a controller stopped meanwhile
                # does not run this slot again when it comes back.
                self.db.execute("UPDATE schedules SET counted_from=? WHERE name=?",
                                (now, row["name"]))
                self.run(row, slot=True)

    def run(self, row: dict[str, Any], answer=None, slot: bool = False) -> None:
        """Resolve the branch's tip in a thread, then submit the run; `answer(reply)` if given.

        A run for a `slot` also takes the slots that pass while its tip is fetched (the
        next counts from when the tip was read), as the missed-slot rule counts from
        the run: a slot a few ms after the tick that found one due is not a second run."""
        name = row["name"]
        self.starting.add(name)
        d = self.ctl.in_thread(self._tip, row["definitions_repo"], row["branch"])

        def resolved(tip: tuple[str, float]) -> None:
            commit, read_at = tip
            if slot:
                self.db.execute("UPDATE schedules SET counted_from=MAX(counted_from, ?) "
                                "WHERE name=?", (read_at, name))
            msg = m.BuildRequest(definitions_repo=row["definitions_repo"],
                                 definitions_commit=commit, system=row["system"], detach=True)
            rid = requests.submit(self.ctl, msg, f"schedule {name}", schedule=name)
            self.db.execute("UPDATE schedules SET last_request=?, last_error='' WHERE name=?",
                            (rid, name))
            if answer:
                answer(m.ScheduleReply(message=f"schedule {name}: request {rid} builds "
                                               f"{row['branch']} at {commit[:12]}",
                                       request_id=rid))

        def failed(failure) -> None:
            why = str(failure.value) if isinstance(failure.value, DistbuildError) else \
                failure.getErrorMessage()
            self.ctl.log(f"schedule {name}: cannot start a run: {why}")
            self.db.execute("UPDATE schedules SET last_error=? WHERE name=?", (why, name))
            if answer:
                answer(m.Error(message=f"schedule {name}: {why}"))

        d.addCallbacks(resolved, failed)
        d.addBoth(lambda _: self.starting.discard(name))

    def _tip(self, repo: str, branch: str) -> tuple[str, float]:
        """Runs in a thread: the commit BRANCH names on the trove (fetched afresh), and
        when it was read."""
        path = self.ctl.mirrors.ensure(repo, branch)
        commit = resolve_in(path, f"refs/heads/{branch}", f"{repo} branch {branch}").commit
        return commit, time.time()

    # -- hooks from requests and events ----------------------------------------------------

    def _schedule_of(self, rid: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT s.* FROM requests r JOIN schedules s ON s.name = "
                              "r.schedule WHERE r.id=?", (rid,)).fetchone()
        return dict(row) if row else None

    def unchanged(self, rid: str, plan: Plan) -> bool:
        """End run `rid` as unchanged if its system cache key is the last success's."""
        schedule = self._schedule_of(rid)
        key = plan.graph.system.cache_key
        if schedule is None or schedule["always"] or key != schedule["last_key"]:
            return False
        reason = (f"system cache key {key[:16]} is that of the last successful run "
                  f"(request {schedule['last_success']}): nothing to build")
        self.ctl.end(rid, "unchanged", m.BuildFinished(request_id=rid, artifacts=[]), reason)
        return True

    def finished(self, rid: str) -> None:
        """Run `rid` built its system: later runs compare with its cache key."""
        schedule = self._schedule_of(rid)
        plan = self.ctl.plans.get(rid)
        if schedule is not None and plan is not None:
            self.db.execute("UPDATE schedules SET last_success=?, last_key=? WHERE name=?",
                            (rid, plan.graph.system.cache_key, schedule["name"]))

    # -- messages --------------------------------------------------------------------------

    def add(self, link, msg: m.ScheduleAdd) -> None:
        """Check the schedule, that its branch exists on the trove, then keep it."""
        check_name(msg.name)
        if bool(msg.every) == bool(msg.cron):
            raise DistbuildError("give exactly one of --every and --cron", "schedule add")
        every = parse_every(msg.every) if msg.every else None
        cron = check_cron(msg.cron) if msg.cron else None
        if not msg.system.endswith(".morph") or not msg.branch:
            raise DistbuildError("SYSTEM must be a .morph path and --branch a branch name",
                                 "schedule add")
        if self.db.execute("SELECT 1 FROM schedules WHERE name=?", (msg.name,)).fetchone():
            raise DistbuildError(f"there is already a schedule named {msg.name}; remove it "
                                 "first", "schedule add")
        repo = self._repo_url(msg.definitions_repo)
        d = self.ctl.in_thread(self._tip, repo, msg.branch)

        def keep(tip: tuple[str, float]) -> None:
            commit, _ = tip
            now = time.time()
            try:
                self.db.execute(
                    "INSERT INTO schedules (name, system, branch, definitions_repo, every, "
                    "cron, always, owner, created, counted_from) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (msg.name, msg.system, msg.branch, repo, every, cron, int(msg.always),
                     link.peer, now, now))
            except Exception as e:  # added meanwhile by another initiator
                link.send(m.Error(message=f"schedule {msg.name}: {e}"))
                return
            row = self.get(msg.name)
            self.ctl.log(f"schedule {msg.name} added by {link.peer}: {msg.system} on "
                         f"{msg.branch} (now at {commit[:12]}), {row['timing']}")
            link.send(m.ScheduleReply(message=f"schedule {msg.name} added", schedules=[row]))

        def refuse(failure) -> None:
            why = str(failure.value) if isinstance(failure.value, DistbuildError) else \
                failure.getErrorMessage()
            link.send(m.Error(message=f"schedule {msg.name}: {why}"))

        d.addCallbacks(keep, refuse)

    def get(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.rows() if r["name"] == name), None)

    def _repo_url(self, repo: str) -> str:
        repo = repo or self.ctl.settings.definitions_repo or "distbuild/definitions"
        if "://" in repo or ":" in repo.split("/", 1)[0]:
            url = self.ctl.aliases.resolve(repo)
        else:
            url = f"{self.ctl.settings.trove_git_url.rstrip('/')}/{repo}"
        trove = self.ctl.settings.trove_git_url.rstrip("/") + "/"
        if not url.startswith(trove):
            raise DistbuildError(f"definitions must come from this network's trove "
                                 f"({trove}), not {url}", "--definitions")
        return url


def _timing(row: dict[str, Any]) -> Timing:
    return Timing(every=row["every"], cron=row["cron"], anchor=row["created"])


def on_schedule_add(ctl: Controller, link, msg: m.ScheduleAdd) -> None:
    try:
        ctl.schedules.add(link, msg)
    except DistbuildError as e:
        link.send(m.Error(message=str(e)))


def on_schedule_remove(ctl: Controller, link, msg: m.ScheduleRemove) -> None:
    gone = ctl.state.db.execute("DELETE FROM schedules WHERE name=?", (msg.name,)).rowcount
    if not gone:
        link.send(m.Error(message=f"no schedule named {msg.name}"))
        return
    ctl.log(f"schedule {msg.name} removed by {link.peer}")
    link.send(m.ScheduleReply(message=f"schedule {msg.name} removed"))


def on_schedule_list(ctl: Controller, link, msg: m.ScheduleList) -> None:
    link.send(m.ScheduleReply(message="", schedules=ctl.schedules.rows()))


def on_schedule_run(ctl: Controller, link, msg: m.ScheduleRun) -> None:
    row = ctl.schedules.get(msg.name)
    if row is None:
        link.send(m.Error(message=f"no schedule named {msg.name}"))
    elif msg.name in ctl.schedules.starting:
        link.send(m.Error(message=f"schedule {msg.name} is starting a run already"))
    else:
        ctl.schedules.run(row, link.send)


HANDLERS = {
    m.ScheduleAdd: on_schedule_add,
    m.ScheduleRemove: on_schedule_remove,
    m.ScheduleList: on_schedule_list,
    m.ScheduleRun: on_schedule_run,
}

"""The controller's shared state, and the tables that route messages and events.

Messages from links go to the handler registered for their type (initiator
messages in `requests`, worker messages in `jobs`); the scheduler's events go
to the handler registered for theirs (in `events`). Every handler runs on the
reactor thread; blocking work goes to a thread through `in_thread`.
"""

from __future__ import annotations

from typing import Any

from distbuild import tokens
from distbuild.controller import events, farm, follow, jobs, requests, schedules, verify
from distbuild.controller.collector import PlanFreezer
from distbuild.controller.joblogs import JobLogs
from distbuild.controller.observers import Observer
from distbuild.controller.plancache import PlanCache
from distbuild.controller.prefetch import Prefetcher
from distbuild.controller.requests import Plan, pin_name
from distbuild.controller.settings import ControllerSettings
from distbuild.controller.state import ControllerState
from distbuild.definitions import Aliases
from distbuild.errors import DistbuildError
from distbuild.protocol import messages as m
from distbuild.scheduling import RequestCancelled, Scheduler
from distbuild.timestamps import service_logger

# Each message type a peer may send, with the function that handles it.
MESSAGE_HANDLERS = {**requests.HANDLERS, **follow.HANDLERS, **jobs.HANDLERS,
                    **verify.HANDLERS, **schedules.HANDLERS, **farm.HANDLERS}


class Controller:
    """Owns the scheduler, the state database and what the handlers share."""

    def __init__(self, settings: ControllerSettings, reactor, log=None):
        from distbuild.trove.client import CacheClient
        from distbuild.trove.mirror import MirrorCache
        from distbuild.trove.refs import GitResolver

        self.settings = settings
        self.reactor = reactor
        self.name = settings.name
        self.log = log or service_logger("controller")
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = ControllerState(settings.state_dir / "controller.db")
        self.secret = tokens.read_secret(settings.token_secret_file)
        self.scheduler = Scheduler(settings.retry_limit, job_id=self.state.next_job)
        self.logs = JobLogs(settings.state_dir / "logs")
        self.cache = CacheClient(settings.artifact_cache_url)
        self.mirrors = MirrorCache(settings.state_dir / "mirrors")
        self.resolver = GitResolver(self.mirrors, trove_git_url=trove_refs_url(settings),
                                    sha1s=self.cache.sha1s)
        self.aliases = Aliases.from_config(settings.trove_git_url, settings.repo_aliases)
        self.workers: dict[str, Any] = {}  # name -> link
        self.watchers: dict[str, set[Any]] = {}  # request id -> initiator links
        self.owners: dict[str, Any] = {}  # request id -> the link whose loss cancels it
        self.plans: dict[str, Plan] = {}
        self.plan_cache = PlanCache()  # graphs kept between requests (requests.plan)
        self.lognames: dict[str, dict[str, str]] = {}
        self.job_results: dict[str, m.Message] = {}  # cache key -> last JobFinished/JobFailed
        # Read-only watchers (metrics, dashboard): each gets every scheduler event before
        # it is applied, and every message from a link after it is handled.
        self.observers: list[Observer] = [Prefetcher(self)]  # hints, not state: prefetch.py
        self.cache_checks = jobs.CacheChecks(self)
        self.verifier = verify.Verifier(self)
        self.schedules = schedules.Schedules(self)
        self.freezer = PlanFreezer()
        self._dispatch_call = None  # the next turn's `dispatch_more`, once asked for

    # -- links ---------------------------------------------------------------------------

    def link_opened(self, link) -> str | None:
        """Accept a link after its Hello, or return why it is refused."""
        hello = link.hello
        if link.role == "worker":
            allowed = self.settings.allowed_workers
            if allowed and hello.name not in allowed:
                return f"worker name '{hello.name}' is not in this controller's allowed_workers"
            earlier = self.workers.get(hello.name)
            if earlier is not None:
                # Most likely its old link died unnoticed here: the newest link wins.
                self.log(f"{link.peer} connected again; closing its earlier link")
                self.workers.pop(hello.name)
                earlier.close("replaced by a newer link from the same worker")
            self.workers[hello.name] = link
        self.log(f"{link.peer} connected ({hello.software or 'unknown software'})")
        return None

    def link_closed(self, link, reason: str) -> None:
        """A link went away: a worker's steps go back to the queue, an owner's requests end."""
        self.log(f"{link.peer} disconnected: {reason}")
        for observer in self.observers:
            observer.link_closed(link)
        if link.role == "worker":
            name = link.hello.name
            if self.workers.get(name) is link:
                del self.workers[name]
                # It may only have lost its link: its steps go on there for a while.
                self.apply(self.scheduler.worker_away(name))
                self.reactor.callLater(self.settings.worker_grace, self.worker_gone, name)
            return
        for watchers in self.watchers.values():
            watchers.discard(link)
        for rid, owner in list(self.owners.items()):
            if owner is link:
                self.log(f"request {rid}: its initiator went away; cancelling")
                self.cancel(rid)

    def message_received(self, link, message: m.Message) -> None:
        """Hand `message` to the handler for its type, if `link`'s role may send it."""
        handler = MESSAGE_HANDLERS.get(type(message))
        if handler is None or message.link not in (link.role, "any"):
            raise DistbuildError(f"{message.type} is not a message a {link.role} may send",
                                 link.peer)
        with self.state.batch():  # one commit for the handler's writes
            handler(self, link, message)
            for observer in self.observers:
                observer.message(link, message)

    def worker_gone(self, name: str) -> None:
        """If worker `name` is still away, run its steps elsewhere."""
        worker = self.scheduler.workers.get(name)
        if worker is not None and worker.away and name not in self.workers:
            self.verifier.worker_lost(name)
            self.lose_jobs(name, lambda: self.scheduler.remove_worker(
                name, f"worker {name} was lost"), f"worker {name} was lost")

    def lose_jobs(self, name: str, change, reason: str) -> None:
        """Apply `change` (which may drop worker `name`'s jobs); record dropped ones as lost."""
        worker = self.scheduler.workers.get(name)
        before = set(worker.jobs) if worker is not None else set()
        self.apply(change())
        for job in before - set(self.scheduler.jobs):
            self.state.attempt_ended(job, "lost", reason)
            self.logs.close(job)

    # -- shared by the handlers ------------------------------------------------------------

    def apply(self, scheduler_events) -> None:
        """Turn scheduler events into messages, state and log lines."""
        for event in scheduler_events:
            for observer in self.observers:
                observer.event(event)
            events.HANDLERS[type(event)](self, event)

    def dispatch_soon(self) -> None:
        """Start more jobs on the reactor's next turn (a scheduler call stopped at its share)."""
        if self._dispatch_call is None:
            self._dispatch_call = self.reactor.callLater(0, self.dispatch_more)

    def dispatch_more(self) -> None:
        """Give free slots ready work; asks for another turn if there is yet more to start."""
        self._dispatch_call = None
        with self.state.batch():
            self.apply(self.scheduler.dispatch())

    def cancel(self, rid: str) -> bool:
        """Cancel request `rid`; False if it is not running."""
        if rid not in self.watchers:
            return False
        cancelled = self.scheduler.cancel_request(rid)
        if not cancelled:  # still graphing: nothing scheduled yet
            cancelled = [RequestCancelled(rid)]
        self.apply(cancelled)
        return True

    def end(self, rid: str, state: str, message: m.Message, reason: str = "",
            artifacts: list[str] | None = None) -> None:
        """Request `rid` is over: tell its watchers, record it, forget it, unpin it."""
        self.tell(rid, message)
        self.state.ended(rid, state, reason, artifacts)
        for observer in self.observers:
            observer.request_ended(rid, state)
        self.log(f"request {rid} {state}{': ' + reason if reason else ''}")
        self.watchers.pop(rid, None)
        self.owners.pop(rid, None)
        self.plans.pop(rid, None)
        self.lognames.pop(rid, None)
        self.unpin(rid)
        self.freezer.ended(rid)

    def unpin(self, rid: str) -> None:
        """Release request `rid`'s cache pin (in a thread; a failure is logged)."""
        name = pin_name(rid)
        self.in_thread(self.cache.unpin, name, tokens.issue(self.secret, f"pin:{name}")
                       ).addErrback(lambda f: self.log(f"could not unpin {name}: "
                                                       f"{f.getErrorMessage()}"))

    def tell(self, rid: str, message: m.Message) -> None:
        """Send `message` to every initiator watching request `rid`."""
        for link in list(self.watchers.get(rid, ())):
            link.send(message)

    def in_thread(self, fn, *args):
        """Run `fn(*args)` in the reactor's thread pool; a Deferred of its result."""
        from twisted.internet import threads

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)


def trove_refs_url(settings: ControllerSettings) -> str:
    """The git URL whose repositories' refs the artifact cache can name (its /1.0/sha1s),
    or "" where the cache is not served by the same trove host as that git URL."""
    from urllib.parse import urlsplit

    git, cache = urlsplit(settings.trove_git_url), urlsplit(settings.artifact_cache_url)
    same = bool(git.hostname) and git.hostname == cache.hostname
    return settings.trove_git_url if same else ""

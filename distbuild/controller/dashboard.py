"""The controller's read-only web dashboard and /metrics, served with twisted.web.

Pages (static HTML and JS under web/) draw themselves from a JSON API and
keep up through server-sent events (livestreams.py):

    /                       the farm: workers, queue, running steps, recent requests
    /request?id=RID         a request: its graph coloured by step state, progress, failure
    /step?request=RID&step=STEP   one step's log, streaming while it runs
    /api/farm, /api/request?id=, /api/graph?id=     JSON (the graph as SVG from dot)
    /events/farm, /events/request?id=, /events/log?request=&step=   event streams
    /metrics                Prometheus text format

Only GET and HEAD are served. On any address but loopback the controller
refuses to start the dashboard without `dashboard_credentials`: a file
holding one line, either a token without a colon (sent as `Authorization:
Bearer TOKEN`, or as the password of HTTP basic with any user name) or
USER:PASSWORD for HTTP basic. When the file is set it is required on loopback too.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.twisted import MetricsResource
from twisted.web import resource, server, static

from distbuild.controller import farm
from distbuild.controller.graphlayout import render_svg
from distbuild.controller.livestreams import LiveStreams, request_view
from distbuild.errors import ConfigError, DistbuildError

if TYPE_CHECKING:
    from distbuild.controller.core import Controller

WEB = Path(__file__).resolve().parent / "web"
GRAPHS_KEPT = 32


def is_loopback(address: str) -> bool:
    """Whether `address` (an IP or "localhost") is only reachable from this machine."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Credentials:
    """What a dashboard request must present: a token, or a user and password."""

    def __init__(self, path: Path):
        try:
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        except OSError as e:
            raise ConfigError(f"cannot read the dashboard credentials: {e.strerror}",
                              str(path)) from None
        if len(lines) != 1:
            raise ConfigError("the dashboard credentials file must hold one line: a token "
                              "or USER:PASSWORD", str(path))
        # HTTP basic user names cannot hold a colon; passwords can.
        user, colon, secret = lines[0].partition(":")
        self.user, self.secret = (user, secret) if colon else ("", user)
        if not self.secret:
            raise ConfigError("the dashboard credentials have an empty token or password",
                              str(path))

    def accepts(self, header: bytes | None) -> bool:
        """Whether an Authorization header carries these credentials."""
        if not header:
            return False
        scheme, _, value = header.decode("latin-1").partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return not self.user and hmac.compare_digest(value, self.secret)
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return ((not self.user or hmac.compare_digest(user, self.user))
                and hmac.compare_digest(password, self.secret))


def credentials_for(address: str, path: Path | None) -> Credentials | None:
    """The credentials the dashboard on `address` requires; refuses a public one without."""
    if path is None:
        if not is_loopback(address):
            raise ConfigError(f"the dashboard listens on {address}, which is not loopback: "
                              "set dashboard_credentials to a file holding a token or "
                              "USER:PASSWORD", "controller: dashboard_address")
        return None
    return Credentials(path)


def _arg(request, name: str) -> str:
    return (request.args.get(name.encode()) or [b""])[0].decode("utf-8", "replace")


def _json(request, data: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-cache")
    return json.dumps(data).encode()


class _Leaf(resource.Resource):
    """A GET-only endpoint made from a function of the request."""

    isLeaf = True

    def __init__(self, render):
        super().__init__()
        self._render = render

    def render_GET(self, request):
        return self._render(request)


class _Guard(resource.Resource):
    """The root: checks credentials, then hands the request to the dashboard's tree."""

    def __init__(self, tree: resource.Resource, credentials: Credentials | None):
        super().__init__()
        self.tree = tree
        self.credentials = credentials

    def getChildWithDefault(self, name, request):
        if self.credentials is not None and not self.credentials.accepts(
                request.getHeader(b"authorization")):
            return _Leaf(self._refuse)
        return self.tree.getChildWithDefault(name, request)

    @staticmethod
    def _refuse(request) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", b'Basic realm="distbuild dashboard"')
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"the distbuild dashboard needs credentials\n"


class Dashboard:
    """The dashboard's resources for one controller."""

    def __init__(self, ctl: Controller, registry, clock):
        self.ctl = ctl
        self.streams = LiveStreams(ctl, clock)
        ctl.observers.append(self.streams)
        self.graphs: OrderedDict[str, dict] = OrderedDict()  # request id -> laid out graph
        self._laying_out: dict[str, list[Any]] = {}  # request id -> requests waiting for it
        tree = resource.Resource()
        for name, page in (("", "farm.html"), ("request", "request.html"),
                           ("step", "step.html")):
            tree.putChild(name.encode(), static.File(str(WEB / page),
                                                     defaultType="text/html"))
        tree.putChild(b"static", static.File(str(WEB)))
        api = resource.Resource()
        api.putChild(b"farm", _Leaf(lambda r: _json(r, farm.snapshot(ctl))))
        api.putChild(b"request", _Leaf(self._request))
        api.putChild(b"graph", _Leaf(self._graph))
        tree.putChild(b"api", api)
        events = resource.Resource()
        events.putChild(b"farm", _Leaf(self.streams.farm))
        events.putChild(b"request", _Leaf(lambda r: self.streams.request(r, _arg(r, "id"))))
        events.putChild(b"log", _Leaf(lambda r: self.streams.log(r, _arg(r, "request"),
                                                                 _arg(r, "step"))))
        tree.putChild(b"events", events)
        tree.putChild(b"metrics", MetricsResource(registry=registry))
        self.tree = tree

    def site(self, credentials: Credentials | None) -> server.Site:
        """A twisted.web site serving the dashboard, behind `credentials` if any."""
        return _QuietSite(_Guard(self.tree, credentials))

    def _request(self, request) -> bytes:
        view = request_view(self.ctl, _arg(request, "id"))
        if view is None:
            return _json(request, {"error": f"no request {_arg(request, 'id')}"}, 404)
        return _json(request, view)

    def _graph(self, request):
        rid = _arg(request, "id")
        if rid in self.graphs:
            self.graphs.move_to_end(rid)
            return _json(request, self.graphs[rid])
        plan = self.ctl.state.plan(rid)
        if not plan:
            return _json(request, {"error": f"request {rid} has no graph (yet)"}, 404)
        waiting = self._laying_out.setdefault(rid, [])
        waiting.append(request)
        if len(waiting) == 1:  # one layout per request, however many pages wait for it
            nodes = json.loads(plan)["nodes"]
            self.ctl.in_thread(render_svg, nodes).addCallbacks(
                lambda svg: self._laid_out(rid, {"svg": svg, "ids": [n["id"] for n in nodes]}),
                lambda f: self._laid_out(rid, {"error": self._why(f, rid)}, 500))
        return server.NOT_DONE_YET

    def _laid_out(self, rid: str, graph: dict, code: int = 200) -> None:
        if code == 200:
            self.graphs[rid] = graph
            while len(self.graphs) > GRAPHS_KEPT:
                self.graphs.popitem(last=False)
        for request in self._laying_out.pop(rid, []):
            if not request._disconnected:
                request.write(_json(request, graph, code))
                request.finish()

    def _why(self, failure, rid: str) -> str:
        if failure.check(DistbuildError):
            return str(failure.value)
        self.ctl.log(f"dashboard: laying out request {rid}'s graph: "
                     f"{failure.getErrorMessage()}")
        return f"could not lay out the graph: {failure.getErrorMessage()}"


class _QuietSite(server.Site):
    """No access log: the controller's log is for builds."""

    def log(self, request) -> None:
        pass


def listen(ctl: Controller, reactor) -> int:
    """Serve the dashboard and /metrics where the settings say; the port it listens on.

    A ConfigError (one line) if the address is public and no credentials are set,
    or if the port cannot be had.
    """
    from twisted.internet import error

    from distbuild.controller.metrics import ControllerMetrics

    settings = ctl.settings
    credentials = credentials_for(settings.dashboard_address, settings.dashboard_credentials)
    metrics = ControllerMetrics(ctl)
    ctl.observers.append(metrics)
    dashboard = Dashboard(ctl, metrics.registry, reactor)
    try:
        port = reactor.listenTCP(settings.dashboard_port, dashboard.site(credentials),
                                 interface=settings.dashboard_address)
    except error.CannotListenError as e:
        raise ConfigError(f"cannot listen for the dashboard: {e.socketError}",
                          f"{settings.dashboard_address}:{settings.dashboard_port}") from None
    return port.getHost().port

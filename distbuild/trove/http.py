"""The artifact cache over HTTP (Twisted web).

`/1.0/` is morph-cache-server's read API, kept exactly; `/2.0/` is what the
network adds: bulk source queries, authenticated atomic uploads, build logs and
pins. Request bodies are received in `uploads`: an upload streams straight
into the store, and a request that will be refused is refused from its
headers, before any of its body is read. Files are sent by `downloads`.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet import threads
from twisted.web import resource, server

from distbuild import jsonlimit, tokens
from distbuild.errors import ResolveError, TroveError
from distbuild.trove import names
from distbuild.trove.downloads import serve_file
from distbuild.trove.metrics import TroveMetrics
from distbuild.trove.refs import expand_alias, resolve_in
from distbuild.trove.store import Store, Upload, UploadError
from distbuild.trove.uploads import (
    MAX_QUERY_BODY,
    RefusedBody,
    TroveRequest,
    UploadSink,
    check_upload_token,
    peer_of,
    token_from,
)

MAX_PIN_TTL = 7 * 24 * 3600


def _text(request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return (message.rstrip("\n") + "\n").encode()


def _json(request, value, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value).encode() + b"\n"


def _keys(request) -> list:
    """The keys of a `{"keys": [KEY, ...]}` query body."""
    body = _read_json(request)
    keys = body.get("keys") if isinstance(body, dict) else None
    if not isinstance(keys, list):
        raise UploadError('body must be {"keys": [KEY, ...]}')
    return keys


def _read_json(request):
    if request.content is None:
        raise UploadError("request needs a JSON body")
    request.content.seek(0, 0)
    raw = request.content.read(MAX_QUERY_BODY + 1)
    if len(raw) > MAX_QUERY_BODY:
        raise UploadError("request body too large", status=413)
    try:
        return jsonlimit.loads(raw)
    except jsonlimit.TooDeep as e:
        raise UploadError(f"request body is refused: {e}") from None
    except ValueError:
        raise UploadError("request body is not valid JSON") from None


class CacheResource(resource.Resource):
    """Every /1.0/ and /2.0/ endpoint of the artifact cache."""

    isLeaf = True

    def __init__(self, store: Store, secret_path: Path | None, reactor=None,
                 git_dir: Path | None = None, log: Callable[[str], None] | None = None,
                 idle_timeout: float | None = 300.0):
        super().__init__()
        self.log = log or (lambda message: None)
        self.idle_timeout = idle_timeout
        self.git_dir = git_dir
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.store = store
        self.secret_path = secret_path
        self._secret = b""
        self._secret_stamp: tuple[int, int, int] | None = None
        self.metrics = TroveMetrics(store)

    def secret(self) -> bytes:
        """The token secret, checked per use so a rotated secret file takes effect at once
        (read again only when the file changed: a stat, not a read, per upload)."""
        if self.secret_path is None:
            raise UploadError("this trove accepts no uploads (no token_secret_file)",
                              status=403)
        try:
            st = os.stat(self.secret_path)
        except OSError:
            return tokens.read_secret(self.secret_path)  # which says what is wrong
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        # A file changed within the last second is read anyway: two writes inside one
        # tick of the file system's clock would leave the same stamp.
        if stamp != self._secret_stamp or time.time() - st.st_mtime < 1:
            self._secret, self._secret_stamp = tokens.read_secret(self.secret_path), stamp
        return self._secret

    def render(self, request):
        parts = [unquote(p.decode("utf-8", "replace")) for p in request.postpath]
        method = request.method.decode("ascii", "replace")
        try:
            return self._route(request, method, parts)
        except UploadError as e:
            self.metrics.refused(e.status)
            if method in ("PUT", "DELETE"):
                self.log(f"refused {method} /{'/'.join(parts)} from {peer_of(request)}: {e}")
            return _text(request, e.status, f"error: {e}")
        except TroveError as e:
            return _text(request, 400, f"error: {e}")

    def _route(self, request, method: str, parts: list[str]):
        if parts == ["1.0", "sha1s"] and method == "GET" and self.git_dir is not None:
            return self._sha1s(request)
        if parts == ["1.0", "artifacts"]:
            if method in ("GET", "HEAD"):
                return self._get_artifact(request)
            if method == "POST":
                return self._query_artifacts(request)
        elif parts[:2] == ["2.0", "sources"]:
            if parts[2:] == ["query"] and method == "POST":
                return self._query_sources(request)
            if parts[2:] == ["metas"] and method == "POST":
                return self._query_metas(request)
            if len(parts) == 3 and method == "PUT":
                return self._put_source(request, parts[2])
            if len(parts) == 3 and method in ("GET", "HEAD"):
                return self._get_meta(request, parts[2])
            if len(parts) == 4 and parts[3] == "log" and method in ("GET", "HEAD"):
                return self._get_log(request, parts[2])
        elif parts[:2] == ["2.0", "pins"] and len(parts) == 3 and method in ("PUT", "DELETE"):
            return self._pin(request, method, parts[2])
        elif parts == [""] and method == "GET":
            return _text(request, 200, "distbuild artifact cache: /1.0/artifacts, /1.0/sha1s, "
                         "/2.0/sources, /2.0/pins, /2.0/status, /metrics (see docs/trove.md)")
        elif parts == ["metrics"] and method == "GET":
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            return self.metrics.text()
        elif parts == ["2.0", "status"] and method == "GET":
            return _json(request, {"sources": len(self.store.keys()),
                                   "bytes": self.store.total_size(),
                                   "pins": sorted(self.store.pins.names())})
        return _text(request, 404, f"error: no such endpoint: {method} /{'/'.join(parts)}")

    def _sha1s(self, request):
        repo = request.args.get(b"repo", [b""])[0].decode("utf-8", "replace")
        ref = request.args.get(b"ref", [b""])[0].decode("utf-8", "replace")
        if not repo or not ref:
            return _text(request, 400, "error: need ?repo=NAME&ref=REF")
        # Accept what morph sent: an alias, a git:// URL of this trove, or a name.
        name = expand_alias(repo, "")
        if "://" in name:
            name = urllib.parse.urlsplit(name).path
        path = self.git_dir / f"{names.check_repo_name(name)}.git"

        def answer(resolved) -> None:
            _respond(request, _json(request, {"repo": repo, "ref": ref,
                                              "sha1": resolved.commit, "tree": resolved.tree}))

        def unknown(failure) -> None:
            failure.trap(ResolveError)
            _respond(request, _text(request, 404, f"error: {failure.value}"))

        # GitPython runs git processes: off the event loop, which serves the uploads.
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                      resolve_in, path, ref, repo)
        d.addCallbacks(answer, unknown)
        d.addErrback(lambda f: _respond(request, _text(request, 500, f"error: {f.value}")))
        return server.NOT_DONE_YET

    def _get_artifact(self, request):
        values = request.args.get(b"filename")
        if not values:
            return _text(request, 400, "error: missing ?filename=KEY.KIND.NAME")
        filename = names.check_filename(values[0].decode("utf-8", "replace"))
        path = self.store.artifact_path(filename)
        if path is None:
            return _text(request, 404, f"error: artifact not in cache: {filename}")
        entry = self.store.entry(filename)
        self.store.touch(names.key_of(filename))
        if entry is not None:
            request.setHeader(b"x-distbuild-sha256", entry.sha256.encode())
        return self._serve_file(request, path, kind="artifact")

    def _serve_file(self, request, path: Path,
                    content_type: bytes = b"application/octet-stream", kind: str = "artifact"):
        size = serve_file(request, path, content_type, self.reactor, self.idle_timeout,
                          self.log)
        if size is None:  # collected between lookup and open
            return _text(request, 404, f"error: no longer in cache: {path.name}")
        if request.method == b"GET":
            self.metrics.downloaded(kind, size)
        return b"" if request.method == b"HEAD" else server.NOT_DONE_YET

    def _query_artifacts(self, request):
        wanted = _read_json(request)
        if not isinstance(wanted, list) or not all(isinstance(f, str) for f in wanted):
            raise UploadError("body must be a JSON list of artifact filenames")
        answer = {}
        for filename in wanted:
            answer[filename] = self.store.artifact_path(names.check_filename(filename)) is not None
        return _json(request, answer)

    def _query_sources(self, request):
        answer = {}
        for key in _keys(request):
            answer[names.check_key(key)] = self.store.has_source(key)
            # Asking means a build is about to rely on it: that counts as use.
            self.store.touch(key)
        return _json(request, {"sources": answer})

    def _query_metas(self, request):
        # What GET /2.0/sources/KEY answers, for many keys in one round trip.
        return _json(request, {"sources": {names.check_key(key): self.store.meta(key)
                                           for key in _keys(request)}})

    def _put_source(self, request, key: str):
        names.check_key(key)
        sink = request.content
        if isinstance(sink, RefusedBody) and sink.error is not None:
            raise sink.error
        if isinstance(sink, UploadSink):
            sink.seal().addCallbacks(lambda _: self._stored(request, sink.upload),
                                     lambda f: self._failed(request, f))
            return server.NOT_DONE_YET
        # Streaming was not possible (see TroveRequest): replay the spooled body.
        check_upload_token(self.secret(), key, token_from(request))
        upload = self.store.begin(key)
        sink.seek(0, 0)
        while block := sink.read(1 << 20):
            upload.write(block)
        upload.seal()
        return self._answer(request, upload)

    def _answer(self, request, upload: Upload) -> bytes:
        stored = upload.commit()
        self.metrics.uploaded(stored, upload.manifest.total_size)
        self.log(f"{'stored' if stored else 'already cached'}: {upload.key} "
                 f"({upload.manifest.total_size} bytes from {peer_of(request)})")
        # Signed for the controller, through the worker: it confirms the step built
        # without asking again (a round trip between the step and its dependents).
        receipt = tokens.issue(self.secret(), tokens.stored_subject(upload.key), RECEIPT_TTL)
        return _json(request, {"key": upload.key, "stored": stored,
                               "already_cached": not stored, "receipt": receipt},
                     201 if stored else 200)

    def _stored(self, request, upload: Upload) -> None:
        try:
            body = self._answer(request, upload)
        except TroveError as e:
            body = _text(request, 500, f"error: {e}")
        _respond(request, body)

    def _failed(self, request, failure) -> None:
        e = failure.value
        if isinstance(e, UploadError):
            self.metrics.refused(e.status)
            body = _text(request, e.status, f"error: {e}")
        else:
            body = _text(request, 500, f"error: upload failed: {e}")
        self.log(f"refused upload from {peer_of(request)}: {e}")
        _respond(request, body)

    def _get_meta(self, request, key: str):
        meta = self.store.meta(names.check_key(key))
        if meta is None:
            return _text(request, 404, f"error: source not in cache: {key}")
        return _json(request, meta)

    def _get_log(self, request, key: str):
        path = self.store.log_path(names.check_key(key))
        if path is None:
            return _text(request, 404, f"error: no build log in cache for {key}")
        return self._serve_file(request, path, b"text/plain; charset=utf-8", kind="log")

    def _pin(self, request, method: str, name: str):
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name) or ".." in name:
            raise UploadError("pin name: 1-100 of letters, digits, '._-'", name)
        check_upload_token(self.secret(), f"pin:{name}", token_from(request))
        if method == "DELETE":
            return _json(request, {"pin": name, "removed": self.store.pins.remove(name)})
        body = _read_json(request)
        keys = body.get("keys") if isinstance(body, dict) else None
        ttl = body.get("ttl", 3600) if isinstance(body, dict) else None
        if not isinstance(keys, list) or not isinstance(ttl, (int, float)) \
                or not 0 < ttl <= MAX_PIN_TTL:
            raise UploadError(f'body must be {{"keys": [...], "ttl": 1..{MAX_PIN_TTL}}}', name)
        self.store.pins.set(name, [names.check_key(k) for k in keys], ttl)
        return _json(request, {"pin": name, "keys": len(keys), "ttl": ttl})


# How long an upload's receipt vouches for the source: enough for the worker's
# job-finished to follow; a later one (a worker that lost its link) is checked by a query.
RECEIPT_TTL = 300


def _respond(request, body: bytes) -> None:
    if not request._disconnected and not request.finished:
        request.write(body)
        request.finish()


class _QuietSite(server.Site):
    """No access log: nothing reads Twisted's, and formatting a line per request was
    6% of the trove's busy time; the trove's log names every upload it stores."""

    def log(self, request) -> None:
        pass


def make_site(store: Store, secret_path: Path | None, reactor=None,
              git_dir: Path | None = None,
              log: Callable[[str], None] | None = None,
              idle_timeout: float | None = 300.0) -> server.Site:
    """A Site serving the cache, with uploads streamed into `store`."""
    cache = CacheResource(store, secret_path, reactor, git_dir, log, idle_timeout)
    site = _QuietSite(cache, requestFactory=TroveRequest, timeout=idle_timeout)
    site.cache = cache
    site.displayTracebacks = False
    return site


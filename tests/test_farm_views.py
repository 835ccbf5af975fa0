"""Farm views: the queue in the scheduler's own order and why each step waits; the
dashboard's address and credential rule, on a real controller process."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from distbuild import config, tokens
from distbuild.controller import farm
from distbuild.controller.core import Controller
from distbuild.controller.dashboard import Credentials, credentials_for
from distbuild.controller.settings import ControllerSettings
from distbuild.definitions import Definitions, DirectorySource, build_graph
from distbuild.dispatchorder import dispatch_order
from distbuild.errors import ConfigError
from distbuild.scheduling import JobStarted, Scheduler, steps_from_graph
from tests.conftest import MORPHS
from tests.controller_process import ControllerProcess

SYSTEM = "system:example-system-x86_64"


@pytest.fixture(scope="module")
def steps():
    graph = build_graph(Definitions(DirectorySource(MORPHS)), "systems/example-system-x86_64.morph")
    return steps_from_graph(graph)


def test_queue_is_the_order_dispatch_takes(steps):
    sched = Scheduler()
    sched.add_request("r1", steps, [SYSTEM], cached=set())
    sched.add_request("r2", [s for s in steps if s.node_id.startswith("chunk:example-core")],
                      ["chunk:example-core/base-files"], cached=set())
    queued = [w.key for w in dispatch_order(sched)]
    assert len(queued) == 2  # libgreet and base-files (shared by both requests)
    # Asking changed nothing: no worker, no job, the same answer again.
    assert sched.workers == {} and sched.jobs == {}
    assert [w.key for w in dispatch_order(sched)] == queued
    events = sched.add_worker("w", "x86_64", 5)
    assert [e.key for e in events if isinstance(e, JobStarted)] == queued
    assert dispatch_order(sched) == []


def _controller(tmp_path: Path) -> Controller:
    tokens.write_secret(tmp_path / "secret")
    (tmp_path / "controller.yaml").write_text(
        f"controller:\n  state_dir: {tmp_path / 'state'}\n  trove_git_url: git://127.0.0.1:1\n"
        "  artifact_cache_url: http://127.0.0.1:1/\n"
        f"  token_secret_file: {tmp_path / 'secret'}\n  host_key: k\n"
        "  initiator_authorized_keys: k\n  worker_authorized_keys: k\n")
    settings = config.component_settings(ControllerSettings, str(tmp_path / "controller.yaml"),
                                         "controller")
    return Controller(settings, reactor=None, log=lambda line: None)


def test_queue_says_why_each_step_waits(tmp_path, steps):
    ctl = _controller(tmp_path)
    ctl.scheduler.add_request("r1", steps, [SYSTEM], cached=set())
    ready, waiting = farm.queue_rows(ctl)
    order = [w.requests["r1"] for w in dispatch_order(ctl.scheduler)]
    assert sorted(order) == ["chunk:example-core/base-files", "chunk:example-core/libgreet"]
    assert [(r["position"], r["step"], r["reason"]) for r in ready] == [
        (1, order[0], "no connected worker of arch x86_64"),
        (2, order[1], "no connected worker of arch x86_64")]
    why = {w["step"]: w["reason"] for w in waiting}
    assert why["stratum:example-core"] == ("waiting for chunk:example-core/base-files "
                                           "and 1 more")
    assert why["chunk:example-apps/hello"] == "waiting for stratum:example-core"
    assert len(waiting) == len(steps) - 2

    ctl.scheduler.add_worker("w1", "x86_64", 1)
    ready, _ = farm.queue_rows(ctl)
    assert [(r["step"], r["reason"]) for r in ready] == [(order[1], "all 1 x86_64 slots busy")]
    # The scheduler knows the worker but no link is open: it shows as away, running the first.
    (worker,) = farm.worker_rows(ctl)
    assert (worker["name"], worker["state"], worker["busy"], worker["slots"]) == (
        "w1", "away", 1, 1)
    assert [s["step"] for s in worker["steps"]] == [order[0]]


def test_credentials_token_and_basic(tmp_path):
    (tmp_path / "token").write_text("s3cret-token\n")
    token = Credentials(tmp_path / "token")
    assert token.accepts(b"Bearer s3cret-token")
    assert token.accepts(b"Basic " + base64.b64encode(b"anyone:s3cret-token"))
    assert not token.accepts(b"Bearer wrong") and not token.accepts(None)
    (tmp_path / "basic").write_text("alice:pass:word\n")
    basic = Credentials(tmp_path / "basic")
    assert basic.accepts(b"Basic " + base64.b64encode(b"alice:pass:word"))
    assert not basic.accepts(b"Basic " + base64.b64encode(b"bob:pass:word"))
    assert not basic.accepts(b"Basic " + base64.b64encode(b"alice:pass"))
    assert not basic.accepts(b"Bearer pass:word")
    assert not basic.accepts(b"Basic !!notbase64")
    (tmp_path / "two").write_text("a\nb\n")
    with pytest.raises(ConfigError, match="one line"):
        Credentials(tmp_path / "two")
    assert credentials_for("127.0.0.1", None) is None
    assert credentials_for("::1", None) is None
    with pytest.raises(ConfigError, match="dashboard_credentials"):
        credentials_for("192.0.2.10", None)


@pytest.mark.slow
def test_controller_refuses_a_public_dashboard_without_credentials(tmp_path):
    controller = ControllerProcess(tmp_path, dashboard_address="0.0.0.0")
    with pytest.raises(AssertionError, match="did not start"):
        controller.start()
    assert controller.proc.returncode == 2
    lines = controller.log().strip().splitlines()
    assert lines == ["distbuild: error: controller: dashboard_address: the dashboard listens "
                     "on 0.0.0.0, which is not loopback: set dashboard_credentials to a file "
                     "holding a token or USER:PASSWORD"], lines
    assert "Traceback" not in controller.log()


def _get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.slow
def test_dashboard_with_credentials_admits_only_them(tmp_path):
    (tmp_path / "dash-credentials").write_text("alice:correct horse\n")
    controller = ControllerProcess(tmp_path, dashboard_credentials=str(
        tmp_path / "dash-credentials")).start()
    try:
        url = controller.info["dashboard_url"]
        good = "Basic " + base64.b64encode(b"alice:correct horse").decode()
        bad = "Basic " + base64.b64encode(b"alice:wrong").decode()
        for path in ("", "api/farm", "metrics", "events/farm"):
            assert _get(url + path)[0] == 401, path
            assert _get(url + path, bad)[0] == 401, path
        status, body = _get(url + "api/farm", good)
        assert status == 200 and json.loads(body)["workers"] == []
        status, body = _get(url + "metrics", good)
        assert status == 200 and b"distbuild_workers_connected 0.0" in body
        request = urllib.request.Request(url + "api/farm", method="POST",
                                         headers={"Authorization": good})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405  # read-only
    finally:
        controller.stop()


def test_a_log_follower_reads_on_from_where_it_stopped(tmp_path):
    from distbuild.controller.joblogs import JobLogs

    logs = JobLogs(tmp_path)
    logs.add("job-1", 0, ["first", "second"])
    offset, lines = logs.read_after("job-1", 0)
    assert lines == ["first", "second"]
    assert logs.read_after("job-1", offset) == (offset, [])
    logs.add("job-1", 2, ["third"])
    assert logs.read_after("job-1", offset) == (offset + 6, ["third"])
    # A small limit still returns whole lines only.
    assert logs.read_after("job-1", 0, limit=8) == (6, ["first"])
    assert logs.read_after("job-2", 0) == (0, [])


def test_reruns_are_counted_by_why_the_attempt_before_ended(tmp_path, steps):
    from prometheus_client import generate_latest

    from distbuild.controller.metrics import ControllerMetrics
    from distbuild.scheduling import StepRequeued

    ctl = _controller(tmp_path)
    metrics = ControllerMetrics(ctl)
    ctl.scheduler.add_worker("w1", "x86_64", 2)
    events = ctl.scheduler.add_request("r1", steps, [SYSTEM], cached=set())
    for e in events:
        metrics.event(e)
    jobs = [e.job for e in events if isinstance(e, JobStarted)]
    assert len(jobs) == 2
    ctl.scheduler.drain_worker("w1")
    requeued = ctl.scheduler.hand_back(jobs[0], "worker w1 is stopping")
    requeued += ctl.scheduler.remove_worker("w1", "worker w1 was lost")
    assert [e.outcome for e in requeued if isinstance(e, StepRequeued)] == [
        "handed-back", "lost"]
    for e in requeued:
        metrics.event(e)
    text = generate_latest(metrics.registry).decode()
    assert 'distbuild_attempts_rerun_total{reason="drained"} 1.0' in text
    assert 'distbuild_attempts_rerun_total{reason="worker_lost"} 1.0' in text
    assert "distbuild_dispatch_latency_seconds_count 2.0" in text
    assert "distbuild_queue_length 2.0" in text  # both back in the queue, no worker
    assert 'distbuild_steps{state="ready"} 2.0' in text
    assert "distbuild_cache_misses_total 0.0" in text  # no plan: only planned requests count

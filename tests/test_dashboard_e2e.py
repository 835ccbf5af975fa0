"""The farm seen from outside: the farm commands, the dashboard in a real headless
Chromium, and both /metrics endpoints, against one real network (`distbuild up`).

The tests run in order on one network and each uses its own edits of the example
definitions (new cache keys), so that every build really runs its steps.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser import chromium, screenshot
from tests.network_process import NetworkProcess, edit, wait_for

pytestmark = pytest.mark.slow

SYSTEM = "systems/example-system-x86_64.morph"
HELLO = "chunk:example-apps/hello"
BASE_FILES = "chunk:example-core/base-files"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    network = NetworkProcess(tmp_path_factory.mktemp("dashboard"), workers=2).start()
    yield network
    network.stop()


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def slow(checkout: Path, morph: str, commands: str) -> None:
    """Run `commands` (shell lines) before the chunk's install commands."""
    lines = "".join(f"- {c}\n" for c in commands.split("\n"))
    edit(checkout / morph, "install-commands:\n", f"pre-install-commands:\n{lines}"
         "install-commands:\n")


def cli_json(net, *args: str):
    proc = net.client(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # the whole of stdout is JSON


def start_build(net, checkout: Path):
    """Submit a build; (its process, its request id) once the controller accepted it."""
    proc = net.initiator(checkout, SYSTEM, wait=False)
    seen = []
    while True:
        line = proc.stdout.readline()
        assert line, "initiator ended before its request was accepted:\n" + "".join(seen)
        seen.append(line)
        found = re.search(r"Request ID: ([0-9a-f]+)", line)
        if found:
            return proc, found.group(1)


def finish(proc, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def scrape(url: str) -> dict[str, float]:
    """A /metrics page as {'name{labels}': value}."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def delta(after: dict, before: dict, name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def dashboard(net) -> str:
    return net.settings["dashboard_url"]


def trove_metrics(net) -> str:
    return net.settings["artifact_cache_url"] + "metrics"


# -- the farm commands ---------------------------------------------------------------------


def test_farm_commands_show_workers_queue_and_steps(net, tmp_path):
    workers = cli_json(net, "workers")
    assert [w["name"] for w in workers] == ["worker-1", "worker-2"]
    assert all(w["state"] == "connected" and w["slots"] == 1 and w["busy"] == 0
               and w["arch"] == "x86_64" and w["last_heartbeat"] > time.time() - 10
               for w in workers), workers

    # A keeps both workers busy for a while; B's base-files is then ready but must wait.
    first = net.checkout(tmp_path / "a")
    slow(first, "strata/example-core/base-files.morph", "sleep 12.01")
    slow(first, "strata/example-core/libgreet.morph", "sleep 12.02")
    proc_a, rid_a = start_build(net, first)
    busy = wait_for(lambda: (lambda ws: ws if all(w["busy"] == 1 for w in ws) else None)(
        cli_json(net, "workers")), 60, "both workers to run A's steps")
    running = sorted(s["step"] for w in busy for s in w["steps"])
    assert running == [BASE_FILES, "chunk:example-core/libgreet"], busy
    shown = net.client("workers").stdout
    assert shown.splitlines()[0].split() == ["NAME", "STATE", "ARCH", "LABELS", "SLOTS",
                                             "CONNECTED", "SINCE", "LAST", "HEARD", "RUNNING"]
    assert re.search(r"^worker-1 +connected +x86_64 +- +1/1 +\S+ \S+ +\d+s ago +"
                     r"chunk:example-core/\S+ \(\d+s\)$", shown, re.M), shown
    second = net.checkout(tmp_path / "b")
    slow(second, "strata/example-core/base-files.morph", "sleep 1.03")
    proc_b, rid_b = start_build(net, second)

    queue = wait_for(lambda: (lambda q: q if any(r["request"] == rid_b for r in q["ready"])
                                else None)(cli_json(net, "queue")), 60, "B's steps to queue")
    text = net.client("queue")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].split() == ["#", "STEP", "ARCH", "REQUEST", "WHY",
                                                   "IT", "WAITS"]
    assert re.search(rf"^1 +chunk:\S+ +x86_64 +{rid_b} +all 2 x86_64 slots busy$",
                     text.stdout, re.M), text.stdout
    assert "wait on dependencies" in text.stdout
    mine = [r for r in queue["ready"] if r["request"] == rid_b]
    assert BASE_FILES in [r["step"] for r in mine], queue
    assert all(r["reason"] == "all 2 x86_64 slots busy" for r in queue["ready"]), queue
    assert [r["position"] for r in queue["ready"]] == list(range(1, len(queue["ready"]) + 1))
    blocked = {(w["request"], w["step"]): w for w in queue["waiting"]}
    stratum = blocked[(rid_b, "stratum:example-core")]
    assert BASE_FILES in stratum["waiting_for"]
    assert stratum["reason"].startswith("waiting for chunk:example-core/")

    assert "Build finished" in finish(proc_a)
    assert "Build finished" in finish(proc_b)

    listed = net.client("list")
    assert listed.stdout.splitlines()[0].split() == ["ID", "STATE", "SUBMITTED", "DURATION",
                                                     "BUILT", "SYSTEM"]
    assert re.search(rf"^{rid_b} +finished +\S+ \S+ +\d+s +8/8 +{SYSTEM}$", listed.stdout,
                     re.M), listed.stdout
    newest = cli_json(net, "list", "--state", "finished", "--limit", "1")
    assert [r["id"] for r in newest] == [rid_b]
    assert cli_json(net, "list", "--state", "failed") == []
    rows = cli_json(net, "list")
    assert [r["id"] for r in rows[:2]] == [rid_b, rid_a]
    assert all(r["duration"] >= 12 for r in rows[:2]) and rows[1]["progress"] == "8/8"

    status = cli_json(net, "status", rid_a)
    steps = {s["step"]: s for s in status["steps"]}
    assert len(steps) == 8 and all(s["state"] == "built" for s in steps.values())
    assert steps[BASE_FILES]["duration"] >= 12 and steps[BASE_FILES]["worker"] in (
        "worker-1", "worker-2") and steps[BASE_FILES]["attempts"] == 1
    # B shared A's libgreet (same key, built for A): for B it was built by A's attempt.
    text = net.client("status", rid_b).stdout
    assert re.search(r"^STEP +STATE +WORKER +STARTED +DURATION +ATTEMPTS$", text, re.M), text
    assert re.search(rf"^{BASE_FILES} +built +worker-\d +\S+ \S+ +\d+s +1$", text, re.M), text


# -- the dashboard -------------------------------------------------------------------------


def rows(browser, table: str) -> list[str]:
    """The text of each row of a table, read at one instant (the page redraws them)."""
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' tbody tr')]"
        ".map(tr => tr.innerText.replace(/\\s+/g, ' ').trim());", table)


def test_farm_page_lists_both_workers(net, browser):
    browser.get(dashboard(net))
    workers = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(rows(browser, "#workers")),
                       20, "two workers on the farm page")
    assert workers[0].startswith("worker-1 connected x86_64 - 0/1"), workers
    assert workers[1].startswith("worker-2 connected x86_64 - 0/1"), workers
    assert all(r.endswith(" ago") for r in workers), workers
    recent = rows(browser, "#requests")
    assert len(recent) == 2 and all(" finished 8/8 " in r for r in recent), recent


def hello_state(browser) -> str | None:
    return browser.execute_script(
        "const g = document.querySelector(`g.step[data-step='${arguments[0]}']`);"
        "return g ? g.dataset.state : null;", HELLO)


def printed(log: str, n: int) -> bool:
    """Whether hello's `echo tick-N` has printed (not just been shown as a command)."""
    return re.search(rf"Z tick-{n}$", log, re.M) is not None


def test_request_and_step_pages_follow_a_build_live(net, browser, tmp_path):
    checkout = net.checkout(tmp_path / "defs")
    # base-files takes a while, so hello is seen waiting; hello prints a line a second.
    slow(checkout, "strata/example-core/base-files.morph", "sleep 3.04")
    ticks = "; ".join(f"echo tick-{n}; sleep 1" for n in range(1, 7))
    slow(checkout, "strata/example-apps/hello.morph", ticks)
    controller_before, trove_before = scrape(dashboard(net) + "metrics"), \
        scrape(trove_metrics(net))
    logs_before = {w: len(net.component_log(w)) for w in ("worker-1", "worker-2")}
    proc, rid = start_build(net, checkout)
    browser.get(f"{dashboard(net)}request?id={rid}")
    browser.execute_script("window.notReloaded = true;")
    seen: list[str] = []

    def record(state: str) -> bool:
        now = hello_state(browser)
        if now and (not seen or seen[-1] != now):
            seen.append(now)
        return now == state

    wait_for(lambda: record("running"), 90, f"hello to run (seen {seen})")
    assert seen[0] == "waiting", seen
    screenshot(browser)
    assert "running" in browser.find_element("css selector", "#steps tbody").text

    during = scrape(dashboard(net) + "metrics")
    assert during['distbuild_steps{state="running"}'] >= 1
    assert during['distbuild_worker_slots_busy{arch="x86_64"}'] >= 1
    assert during["distbuild_workers_connected"] == 2
    assert during['distbuild_worker_slots{arch="x86_64"}'] == 2

    # The running step's own page: new lines appear as hello prints them.
    request_tab = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(f"{dashboard(net)}step?request={rid}&step={HELLO}")
    browser.execute_script("window.notReloaded = true;")
    log = browser.find_element("id", "log")
    wait_for(lambda: printed(log.text, 2), 30, "tick-2 in the log")
    assert not printed(log.text, 6)  # still running: what follows must arrive live
    wait_for(lambda: printed(log.text, 6), 30, "tick-6 in the log")
    wait_for(lambda: browser.find_element("id", "state").text == "built", 60,
               "the step page to say built")
    assert browser.execute_script("return window.notReloaded === true;")
    assert len(re.findall(r"Z tick-3$", log.text, re.M)) == 1, log.text
    browser.close()
    browser.switch_to.window(request_tab)

    out = finish(proc)
    assert "Build finished" in out, out
    wait_for(lambda: browser.find_element("id", "state").text == "finished", 30,
               "the request page to say finished")
    assert browser.execute_script("return window.notReloaded === true;")
    record("built")
    assert seen[-1] == "built" and "running" in seen, seen
    states = browser.execute_script(
        "return [...document.querySelectorAll('g.step')].map(g => g.dataset.state);")
    assert len(states) == 8 and set(states) <= {"built", "cached"}, states
    assert browser.find_element("id", "progress").text.startswith("built ")

    # The counts in both /metrics match what this build did.
    status = cli_json(net, "status", rid)
    built = [s for s in status["steps"] if s["state"] == "built"]
    cached = [s for s in status["steps"] if s["state"] == "cached"]
    assert len(built) + len(cached) == 8 and len(built) >= 3  # base-files, hello and after
    after = wait_for(lambda: (lambda m: m if delta(m, controller_before,
                                                     'distbuild_requests_total{outcome="finished"}')
                                == 1 else None)(scrape(dashboard(net) + "metrics")),
                       10, "the finished request to be counted")
    trove_after = scrape(trove_metrics(net))
    by_kind = {k: sum(1 for s in built if s["kind"] == k) for k in ("chunk", "stratum",
                                                                   "system")}
    for kind, n in by_kind.items():
        assert delta(after, controller_before, f'distbuild_steps_built_total{{kind="{kind}"}}') \
            == n, kind
        assert delta(after, controller_before,
                     f'distbuild_step_duration_seconds_count{{kind="{kind}"}}') == n, kind
    assert delta(after, controller_before, "distbuild_cache_misses_total") == len(built)
    assert delta(after, controller_before, "distbuild_cache_hits_total") == len(cached)
    assert delta(after, controller_before, "distbuild_dispatch_latency_seconds_count") \
        == len(built)
    assert delta(after, controller_before, 'distbuild_step_duration_seconds_sum{kind="chunk"}') \
        >= 6 + 3  # hello's ticks and base-files' sleep
    assert after['distbuild_steps{state="running"}'] == 0
    assert after["distbuild_queue_length"] == 0
    # What workers say they sent is what the trove took; what they fetched, it served.
    sent = delta(after, controller_before, "distbuild_cache_sent_bytes_total")
    assert sent > 0
    assert delta(trove_after, trove_before, "distbuild_trove_upload_bytes_total") == sent
    stored = 0
    for step in built:
        with urllib.request.urlopen(f"{net.settings['artifact_cache_url']}2.0/sources/"
                                    f"{step['key']}", timeout=10) as r:
            stored += sum(a["size"] for a in json.load(r)["artifacts"])
    assert 0 < stored < sent  # the artifacts, and their logs besides
    assert delta(trove_after, trove_before, 'distbuild_trove_uploads_total{result="stored"}') \
        == len(built)
    fetched = delta(after, controller_before, "distbuild_cache_fetched_bytes_total")

    def prefetched() -> int:
        """Bytes the workers prefetched (no step reports them: their logs do)."""
        return sum(int(n) for w, start in logs_before.items() for n in re.findall(
            r" prefetched \S+ \((\d+) bytes\)", net.component_log(w)[start:]))

    assert fetched + prefetched() > 0
    # A prefetch may still be ending: the trove's count and the logs' meet within seconds.
    wait_for(lambda: delta(scrape(trove_metrics(net)), trove_before,
                           'distbuild_trove_download_bytes_total{kind="artifact"}')
             == fetched + prefetched(), 15, "the trove's downloads to match the workers'")
    assert delta(trove_after, trove_before, "distbuild_trove_stored_sources") == len(built)
    assert trove_after["distbuild_trove_stored_bytes"] >= sent


def test_failed_step_page_shows_its_log(net, browser, tmp_path):
    checkout = net.checkout(tmp_path / "defs")
    slow(checkout, "strata/example-apps/motd.morph", "echo motd-is-broken-0705\nexit 3")
    before = scrape(dashboard(net) + "metrics")
    proc, rid = start_build(net, checkout)
    out = finish(proc)
    assert "failed" in out.lower(), out
    browser.get(f"{dashboard(net)}step?request={rid}&step=chunk:example-apps/motd")
    log = browser.find_element("id", "log")
    wait_for(lambda: "motd-is-broken-0705" in log.text, 20, "the failed step's log")
    wait_for(lambda: browser.find_element("id", "state").text == "failed", 20,
               "the step page to say failed")
    browser.get(f"{dashboard(net)}request?id={rid}")
    failure = wait_for(lambda: (lambda f: f if f.is_displayed() else None)(
        browser.find_element("id", "failure")), 20, "the failure box")
    assert "chunk:example-apps/motd" in failure.text
    assert "motd-is-broken-0705" in browser.find_element("id", "failure-log").text
    wait_for(lambda: browser.execute_script(
        "const g = document.querySelector(\"g.step[data-step='chunk:example-apps/motd']\");"
        "return g && g.dataset.state === 'failed';"), 20, "motd drawn as failed")
    after = scrape(dashboard(net) + "metrics")
    assert delta(after, before, 'distbuild_requests_total{outcome="failed"}') == 1

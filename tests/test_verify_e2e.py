"""Reproducibility checks through real processes: `distbuild verify` builds steps again on
the other worker; a reproducible build matches, a chunk that writes the time into a file
does not, and the report names the file and both workers. Stored artifacts stay as they were.
"""

from __future__ import annotations

import re

import pytest

from distbuild.trove.client import CacheClient
from tests.browser import chromium
from tests.network_process import NetworkProcess, wait_for
from tests.test_dashboard_e2e import scrape
from tests.test_durable_e2e import SYSTEM, edit, request_id

pytestmark = pytest.mark.slow

HELLO = "chunk:example-apps/hello"


def test_verify_reports_a_match_then_a_mismatch_naming_the_file(tmp_path):
    net = NetworkProcess(tmp_path / "network", workers=2).start()
    try:
        checkout = net.checkout(tmp_path / "defs")
        built = net.initiator(checkout, SYSTEM)
        assert built.returncode == 0, built.stdout + built.stderr
        rid = request_id(built.stdout + built.stderr)
        same = net.client("verify", rid)
        assert same.returncode == 0, same.stdout + same.stderr
        lines = [line for line in same.stdout.splitlines() if line.strip()]
        assert lines and all(": reproducible (built by worker-" in line for line in lines)
        assert any(line.startswith(f"{HELLO}: reproducible") for line in lines)
        for line in lines:
            builder, rebuilder = re.search(r"built by (\S+), rebuilt by (\S+)\)", line).groups()
            assert builder != rebuilder

        edit(checkout / "strata/example-apps/hello.morph", "install-commands:\n",
             "install-commands:\n- mkdir -p \"$DESTDIR$PREFIX/share\"; "
             "date +%s%N > \"$DESTDIR$PREFIX/share/hello-built-at\"\n")
        built = net.initiator(checkout, SYSTEM)
        assert built.returncode == 0, built.stdout + built.stderr
        rid = request_id(built.stdout + built.stderr)
        key = net.node_key(HELLO)
        cache = CacheClient(net.settings["artifact_cache_url"])
        before = cache.source_meta(key)
        differs = net.client("verify", rid, "hello")
        assert differs.returncode == 1, differs.stdout + differs.stderr
        out = differs.stdout
        assert f"{HELLO}: NOT reproducible (built by worker-" in out
        changed = [line for line in out.splitlines() if "hello-built-at:" in line]
        assert len(changed) == 1, out
        assert re.search(r"usr/share/hello-built-at: worker-\d file 20 bytes sha256 [0-9a-f]{64} "
                         r"mode 0644; worker-\d file 20 bytes sha256 [0-9a-f]{64}", changed[0])
        left, right = re.findall(r"sha256 ([0-9a-f]{64})", changed[0])
        assert left != right
        assert cache.source_meta(key) == before  # the check's artifacts replaced nothing
        status = net.client("status", rid)
        assert f"verify: {HELLO}: NOT reproducible" in status.stdout
        assert "usr/share/hello-built-at" in status.stdout
        assert ": pin verify-" not in net.component_log("controller")  # pinned, unpinned
        counts = scrape(net.settings["dashboard_url"] + "metrics")
        assert counts['distbuild_verifications_total{outcome="mismatch"}'] == 1
        assert counts['distbuild_verifications_total{outcome="match"}'] == len(lines)
        # The request's dashboard page shows the check, the file and both workers.
        browser = chromium()
        try:
            browser.get(f"{net.settings['dashboard_url']}request?id={rid}")
            checks = wait_for(lambda: (lambda t: t if "mismatch" in t.text else None)(
                browser.find_element("id", "checks")), 20, "the checks table")
            assert HELLO in checks.text and "usr/share/hello-built-at" in checks.text
            assert re.search(r"worker-\d\s+worker-\d", checks.text), checks.text
        finally:
            browser.quit()
        bad = net.client("verify", rid, "no-such-step")
        assert bad.returncode == 1 and "neither a stratum nor a chunk" in bad.stderr
    finally:
        net.stop()

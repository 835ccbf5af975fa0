"""Prefetch through real processes: `distbuild up` with two workers building the example system.

base-files is made slow, so the worker building it is busy when libgreet
(built on the other worker) is confirmed: the controller's hint reaches it
then, long before any step that stages libgreet can be given to it.
"""

from __future__ import annotations

import pytest

from tests.network_process import NetworkProcess, edit, restart_workers, wait_for

pytestmark = pytest.mark.slow

SYSTEM = "systems/example-system-x86_64.morph"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    network = NetworkProcess(tmp_path_factory.mktemp("prefetch"), workers=2).start()
    yield network
    network.stop()


def slow_base_files(net, tmp_path, marker: str):
    """Start building the example system with base-files sleeping 6 s (`marker` makes it new).

    Returns the build and the keys libgreet and base-files had before it.
    """
    before = (net.node_key("chunk:example-core/libgreet"),
              net.node_key("chunk:example-core/base-files"))
    checkout = net.checkout(tmp_path / "defs")
    edit(checkout / "strata/example-core/base-files.morph", "install-commands:\n",
         f"build-commands:\n- sleep 6 # {marker}\ninstall-commands:\n")
    edit(checkout / "strata/example-core/libgreet.morph", "build-commands:\n",
         f"build-commands:\n- true {marker}\n")
    return net.initiator(checkout, SYSTEM, wait=False), before


def attempt_of(net, node: str, outcome: str, before: str | None) -> dict:
    """`node`'s attempt with `outcome` in the newest request (planned after key `before`)."""
    key = wait_for(lambda: (k := net.node_key(node)) not in (None, before) and k, 60,
                   f"{node}'s key")
    return wait_for(lambda: next((a for a in net.attempts() if a["cache_key"] == key
                                  and a["outcome"] == outcome), None), 90, f"{node} {outcome}")


def other(worker: str) -> str:
    return "worker-2" if worker == "worker-1" else "worker-1"


def finish(proc) -> None:
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out


def test_an_artifact_built_on_one_worker_is_on_the_other_before_a_step_needs_it(net, tmp_path):
    proc, (old_libgreet, old_base_files) = slow_base_files(net, tmp_path, "first")
    try:
        libgreet = attempt_of(net, "chunk:example-core/libgreet", "built", old_libgreet)
        busy = other(libgreet["worker"])
        base_files = attempt_of(net, "chunk:example-core/base-files", "running",
                                old_base_files)
        assert base_files["worker"] == busy
        prefix = f"prefetched {libgreet['cache_key']}.chunk.libgreet"
        wait_for(lambda: prefix in net.component_log(busy), 30, f"{busy} to prefetch libgreet")
        # Meanwhile the busy worker was given nothing but base-files: the artifact came
        # without any step of its asking for it.
        assert [a["cache_key"] for a in net.attempts() if a["worker"] == busy] == \
            [base_files["cache_key"]]
        assert base_files["job"] in {a["job"] for a in net.attempts()
                                     if a["outcome"] == "running"}
        names = [line.split(prefix, 1)[1].split()[0] for line in
                 net.component_log(busy).splitlines() if prefix in line]
        unpacked = net.state / busy / "artifacts" / ".unpacked"
        assert all((unpacked / f"{libgreet['cache_key']}.chunk.libgreet{n}").is_dir()
                   for n in names)
    finally:
        finish(proc)
    for name in ("controller", "worker-1", "worker-2"):
        assert "Traceback" not in net.component_log(name), name


def test_a_worker_whose_cache_is_full_prefetches_nothing(net, tmp_path):
    restart_workers(net, cache_limit_mb=0)  # the example's artifacts are KiB: any is too many
    proc, (old_libgreet, _) = slow_base_files(net, tmp_path, "second")
    try:
        libgreet = attempt_of(net, "chunk:example-core/libgreet", "built", old_libgreet)
        busy = other(libgreet["worker"])
        skipped = f"prefetch of {libgreet['cache_key']}.chunk.libgreet"
        wait_for(lambda: skipped in net.component_log(busy), 30, f"{busy} to skip libgreet")
        log = net.component_log(busy)
        assert "skipped: the local cache holds" in log.split(skipped, 1)[1].splitlines()[0]
        assert f"prefetched {libgreet['cache_key']}" not in log
    finally:
        finish(proc)

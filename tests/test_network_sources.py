"""Real definitions and real sources on a real local network (trove, controller, 2 workers).

`distbuild graph` in a checkout prints the keys the controller then builds
with; a chunk whose repository is not on the trove says what to do; warnings
about unknown fields reach the initiator; and GNU hello's release tarball,
imported with `distbuild trove import`, builds without autotools.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import fetched_source
from tests.network_process import NetworkProcess
from tests.test_network_e2e import edit

pytestmark = pytest.mark.slow

SYSTEM = "systems/example-system-x86_64.morph"


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    with NetworkProcess(tmp_path_factory.mktemp("network"), workers=2) as net:
        yield net


def distbuild(network: NetworkProcess, cwd: Path, *args: str, env: dict | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """`distbuild --config network.yaml ARGS` (any command) in `cwd`."""
    argv = [sys.executable, "-m", "distbuild", *args[:1], "--config", str(network.config),
            *args[1:]]
    return subprocess.run(argv, cwd=cwd, env={**network.env, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def test_graph_in_a_checkout_prints_the_keys_the_controller_builds_with(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    # Uncommitted, as builds take the checkout as it is: keys must follow the files.
    edit(checkout / "strata/example-apps/hello.morph", "- make PREFIX", "- make -s PREFIX")
    cache = tmp_path / "cache"
    graph = distbuild(network, checkout, "graph", "--json", SYSTEM,
                      env={"XDG_CACHE_HOME": str(cache)})
    assert graph.returncode == 0, graph.stderr
    keys = {n["id"]: n["cache_key"] for n in json.loads(graph.stdout)["nodes"]}
    assert list((cache / "distbuild" / "mirrors").glob("*hello*.git"))
    build = network.initiator(checkout, SYSTEM)
    assert build.returncode == 0, build.stdout + build.stderr
    assert len(keys) == 8
    assert {nid: network.node_key(nid) for nid in keys} == keys


def test_chunk_on_no_trove_repository_names_stratum_chunk_and_import(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    stratum = checkout / "strata/example-apps.morph"
    stratum.write_text(stratum.read_text() + "- name: extra\n  repo: upstream:no-such-lib\n"
                       "  ref: master\n  build-system: manual\n")
    proc = network.initiator(checkout, SYSTEM)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    trove = network.settings["trove_git_url"]
    expected = (f"strata/example-apps.morph:24: chunks[3].repo: chunk 'extra': repository "
                f"'upstream:no-such-lib' is not on the trove ({trove}/delta/no-such-lib); "
                f"add it with `distbuild trove import delta/no-such-lib SOURCE`")
    assert f"Failed to build {SYSTEM}: {expected}" in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    # `graph` in the same checkout says the same.
    graph = distbuild(network, checkout, "graph", SYSTEM,
                      env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert graph.returncode == 2
    assert graph.stderr.splitlines() == [f"distbuild: error: {expected}"]


def test_controller_warnings_reach_the_initiator_and_strict_fails(network, tmp_path):
    checkout = network.checkout(tmp_path / "defs")
    edit(checkout / "strata/example-apps.morph", "  repo: upstream:motd\n",
         "  repo: upstream:motd\n  unpretrify-ref: master\n")
    warning = ("strata/example-apps.morph:22: chunks[2].unpretrify-ref: unknown field; "
               "did you mean 'unpetrify-ref'?")
    built = network.initiator(checkout, SYSTEM)
    assert built.returncode == 0, built.stdout + built.stderr
    assert built.stderr.splitlines().count(warning) == 1, built.stderr
    assert warning not in built.stdout
    strict = network.initiator(checkout, SYSTEM, "--strict")
    assert strict.returncode == 1
    assert f"Failed to build {SYSTEM}: {warning}" in strict.stdout, strict.stdout


# -- a real GNU autotools release -------------------------------------------------------------

GNU_STRATUM = """\
name: gnu
kind: stratum
description: GNU hello, imported from its release tarball.
chunks:
- name: gnu-hello
  morph: strata/gnu/gnu-hello.morph
  repo: upstream:gnu-hello
  ref: master
"""
# The autotools build system, but make may not run autotools: were a generated file
# older than its input, the build would fail here whether autotools are installed or not.
NO_AUTOTOOLS = "ACLOCAL=false AUTOCONF=false AUTOMAKE=false AUTOHEADER=false MAKEINFO=false"
GNU_HELLO = f"""\
name: gnu-hello
kind: chunk
build-system: autotools
# hello's configure takes a source directory holding .git for a git checkout
# (BUILD_FROM_GIT) and would then remake its man page with help2man; its release
# tarball, which this is, has no .git.
pre-configure-commands:
- rm -rf .git
build-commands:
- make {NO_AUTOTOOLS}
install-commands:
- make DESTDIR="$DESTDIR" install {NO_AUTOTOOLS}
"""
GNU_SYSTEM = """\
name: gnu-hello-x86_64
kind: system
arch: x86_64
strata:
- name: gnu
  morph: strata/gnu.morph
"""


def test_gnu_hello_release_tarball_builds_without_autotools(network, tmp_path):
    tarball = fetched_source("hello_*.orig.tar.gz")
    imported = distbuild(network, tmp_path, "trove", "import", "upstream:gnu-hello",
                         str(tarball))
    assert imported.returncode == 0, imported.stderr
    checkout = network.checkout(tmp_path / "defs")
    for path, text in {"strata/gnu.morph": GNU_STRATUM, "strata/gnu/gnu-hello.morph": GNU_HELLO,
                       "systems/gnu-hello-x86_64.morph": GNU_SYSTEM}.items():
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        (checkout / path).write_text(text)
    first = network.initiator(checkout, "systems/gnu-hello-x86_64.morph", timeout=900)
    log = (checkout / "build-step-gnu-hello.log")
    assert first.returncode == 0, first.stdout + (log.read_text()[-3000:] if log.exists() else "")
    assert "Need to build 3/3 artifacts" in first.stdout
    (url,) = re.findall(r"^Artifact: (\S+)$", first.stdout, re.M)
    system = tmp_path / "system.tar.gz"
    urllib.request.urlretrieve(url, system)
    root = tmp_path / "root"
    with tarfile.open(system) as tar:
        tar.extractall(root, filter="tar")
    hello = subprocess.run([root / "usr/bin/hello"], capture_output=True, text=True)
    assert hello.returncode == 0 and hello.stdout == "Hello, world!\n"
    again = network.initiator(checkout, "systems/gnu-hello-x86_64.morph")
    assert again.returncode == 0, again.stdout
    assert "Need to build 0/3 artifacts" in again.stdout

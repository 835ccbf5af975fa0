"""Build steps, really run: git checkouts, bubblewrap, the example system, and failures."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from distbuild import examples, sandbox
from distbuild.definitions import Node
from distbuild.runprocess import Cancelled, CancelToken
from distbuild.sandbox import SandboxError
from distbuild.worker import artifacts
from distbuild.worker.cache import DirectoryArtifactStore, LocalArtifactCache
from distbuild.worker.chunk import staged_chunks
from distbuild.worker.errors import CommandFailed, DiskFull, MissingArtifact, SourceError
from distbuild.worker.sources import GitSources
from distbuild.worker.step import StepRunner, WorkerSettings, load_meta
from tests.conftest import small_tmpfs
from tests.proctree import descendants, wait_gone
from tests.worker_graph import chunk_node, example_graph

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def make_runner(work: Path, store: DirectoryArtifactStore, **settings) -> StepRunner:
    ws = WorkerSettings(work, staging_over_host=True, **settings)
    return StepRunner(ws, GitSources(work / "mirrors"), LocalArtifactCache(work / "cache", store))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The example system built step by step, in dependency order."""
    base = tmp_path_factory.mktemp("example")
    examples.make_all(base / "repos")
    graph = example_graph(base / "repos", base / "resolver")
    nodes = graph.nodes
    store = DirectoryArtifactStore(base / "store")
    runner = make_runner(base / "work", store)
    results, logs = {}, {}
    for node_id in graph.order:
        logs[node_id] = []
        results[node_id] = runner.run(nodes[node_id], nodes, on_line=logs[node_id].append)
        store.upload(results[node_id].files)
    return {"base": base, "nodes": nodes, "store": store, "results": results, "logs": logs,
            "runner": runner}


@pytest.fixture
def system_root(built, tmp_path):
    result = built["results"]["system:example-system-x86_64"]
    root = tmp_path / "sysroot"
    root.mkdir()
    artifacts.extract(result.artifacts[0].path, root, result.artifacts[0].filename)
    return root


def run_in(root: Path, *argv: str) -> list[str]:
    lines: list[str] = []
    spec = sandbox.SandboxSpec(argv=argv, root=None, layout=sandbox.merged_layout(root),
                               binds=sandbox.host_binds(), env={"PATH": "/usr/bin:/bin"})
    assert sandbox.run(spec, on_line=lines.append) == 0, lines
    return lines


def test_hello_from_the_assembled_system_prints_what_its_source_says(system_root):
    source = (examples.SOURCES / "libgreet" / "greet.c").read_text()
    greeting = re.search(r'greet_message\(void\)\s*\{\s*return "([^"]+)";', source).group(1)
    assert run_in(system_root, "hello") == [greeting]
    assert run_in(system_root, "greeting-tool", "World") == [
        greeting.split(",")[0] + ", World!"]


def test_system_integration_ran_inside_the_system(system_root):
    assert (system_root / "etc/hello-version").read_text() == "hello 1.0 (libgreet 1.0)\n"
    assert not any(p.is_symlink() and str(p.readlink()).startswith(sandbox.HOST_MOUNT)
                   for p in system_root.rglob("*"))
    assert not (system_root / sandbox.HOST_MOUNT.lstrip("/")).exists()


def test_system_metadata_names_what_went_in_with_cache_keys(built, system_root):
    doc = load_meta(system_root / "baserock/example-system-x86_64.meta")
    nodes = built["nodes"]
    hello_key = nodes["chunk:example-apps/hello"].cache_key
    assert doc["cache_key"] == nodes["system:example-system-x86_64"].cache_key
    assert f"{hello_key}.chunk.hello-bins" in {c["filename"] for c in doc["contents"]}
    store = built["store"]
    for item in doc["contents"]:
        assert (store.directory / f"{item['filename']}.sha256").read_text().strip() == \
            item["sha256"]


def test_every_chunk_produces_every_split_artifact(built):
    for node_id, result in built["results"].items():
        node = built["nodes"][node_id]
        assert [a.filename for a in result.artifacts] == list(node.artifact_filenames())
        meta = load_meta(result.meta.path)
        for a in result.artifacts:
            assert meta["artifacts"][a.filename]["sha256"] == \
                artifacts.describe(a.path, a.filename).sha256


def test_stratum_artifacts_split_chunk_artifacts(built):
    result = built["results"]["stratum:example-core"]
    by_name = {a.filename.rsplit(".", 1)[1]: a for a in result.artifacts}
    devel = artifacts.read_stratum(by_name["example-core-devel"].path, "devel")
    runtime = artifacts.read_stratum(by_name["example-core-runtime"].path, "runtime")
    assert {c["filename"].rsplit(".", 1)[1] for c in devel["chunks"]} == {
        "libgreet-devel", "libgreet-doc", "base-files-devel", "base-files-doc"}
    assert "libgreet-libs" in {c["filename"].rsplit(".", 1)[1] for c in runtime["chunks"]}


def test_stratum_step_downloads_no_chunk_artifacts(built, tmp_path):
    runner = make_runner(tmp_path / "fresh", built["store"])
    node = built["nodes"]["stratum:example-core"]
    result = runner.run(node, built["nodes"])
    assert runner.cache.downloads == 0
    before = built["results"]["stratum:example-core"].artifacts
    assert [a.path.read_bytes() for a in result.artifacts] == [
        a.path.read_bytes() for a in before]


def test_log_lines_are_stamped_with_phase_headers_and_echoed_commands(built):
    result = built["results"]["chunk:example-core/libgreet"]
    lines = result.log.path.read_text().splitlines()
    assert lines == built["logs"]["chunk:example-core/libgreet"]
    assert all(STAMP.match(line) for line in lines)
    texts = [STAMP.sub("", line) for line in lines]
    build = texts.index("=== build commands ===")
    assert texts[build + 1] == '+ make PREFIX="$PREFIX"'
    assert texts[build + 2].startswith("cc ")
    assert texts.index("=== install commands ===") > build


def test_greeting_tool_configure_found_hello_through_the_staging_closure(built):
    texts = [STAMP.sub("", line) for line in built["logs"]["chunk:example-apps/greeting-tool"]]
    assert "checking for hello... yes" in texts


def test_staging_semantics_for_bootstrap_chunks():
    def chunk(stratum, name, mode="staging", depends=()):
        return Node(id=f"chunk:{stratum}/{name}", kind="chunk", name=name, arch="x86_64",
                        stratum=stratum, build_mode=mode, depends=depends)

    nodes = {n.id: n for n in [
        chunk("core", "boot-cc", "bootstrap"),
        chunk("core", "libc", "staging", ("chunk:core/boot-cc",)),
        chunk("core", "boot-2", "bootstrap", ("chunk:core/libc",)),
        Node(id="stratum:core", kind="stratum", name="core", arch="x86_64",
                 depends=("chunk:core/boot-cc", "chunk:core/libc", "chunk:core/boot-2")),
        Node(id="stratum:other", kind="stratum", name="other", arch="x86_64"),
        chunk("other", "x", "staging"),
    ]}
    nodes["chunk:apps/app"] = chunk("apps", "app", "staging", ("stratum:core",))
    nodes["chunk:apps/boot"] = chunk("apps", "boot", "bootstrap", ("stratum:core",))
    ids = lambda node: [n.id for n in staged_chunks(node, nodes)]  # noqa: E731
    assert ids(nodes["chunk:apps/app"]) == ["chunk:core/libc"]
    assert ids(nodes["chunk:apps/boot"]) == []
    assert ids(nodes["chunk:core/boot-2"]) == ["chunk:core/boot-cc", "chunk:core/libc"]
    assert ids(nodes["chunk:core/libc"]) == ["chunk:core/boot-cc"]


def test_second_build_of_a_source_fetches_nothing(built, tmp_path):
    runner = built["runner"]
    node = built["nodes"]["chunk:example-core/base-files"]
    lines: list[str] = []
    runner.run(node, built["nodes"], on_line=lines.append)
    assert not any("Fetching" in line for line in lines)


# -- failures ---------------------------------------------------------------


@pytest.fixture
def repo(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("content\n")
    commit = examples.make_git_repo(src, tmp_path / "repo")
    return tmp_path / "repo", commit


@pytest.fixture
def runner(tmp_path):
    return make_runner(tmp_path / "work", DirectoryArtifactStore(tmp_path / "store"))


def assert_nothing_left(runner: StepRunner, key: str) -> None:
    assert list(runner.settings.tmp_dir.iterdir()) == []
    assert not (runner.settings.out_dir / key).exists()


def test_failing_command_reports_status_command_and_last_lines(runner, repo):
    node = chunk_node(*repo, {"build": ("echo one", "echo about to fail; exit 3",
                                        "echo never")})
    lines: list[str] = []
    with pytest.raises(CommandFailed) as info:
        runner.run(node, {}, on_line=lines.append)
    err = info.value
    assert (err.status, err.command, err.phase) == (3, "echo about to fail; exit 3", "build")
    assert err.last_lines == ("about to fail",)
    assert str(err).startswith(f"{node.id}: build command 'echo about to fail; exit 3' "
                               "exited with status 3\nlast lines of output:\nabout to fail")
    assert err.what.splitlines()[0] == ("build command 'echo about to fail; exit 3' "
                                        "exited with status 3")
    assert not any(line.endswith(" never") for line in lines)
    assert lines[-1].endswith(f"Build of {node.id} failed: {err.what.splitlines()[0]}")
    assert_nothing_left(runner, node.cache_key)


def test_missing_repository(runner, tmp_path):
    node = chunk_node(tmp_path / "no-such-repo", "a" * 40, {"build": ("true",)})
    with pytest.raises(SourceError, match=r"cannot fetch repository .*no-such-repo"):
        runner.run(node, {})
    assert_nothing_left(runner, node.cache_key)


def test_missing_commit(runner, repo):
    node = chunk_node(repo[0], "b" * 40, {"build": ("true",)})
    with pytest.raises(SourceError, match=f"commit {'b' * 40} is not in repository"):
        runner.run(node, {})


def test_missing_dependency_artifact(runner, repo):
    dep = chunk_node(*repo, {}, name="dep", key="d" * 64)
    node = chunk_node(*repo, {"build": ("true",)}, depends=(dep.id,))
    with pytest.raises(MissingArtifact, match=f"{'d' * 64}.chunk.dep-bins is not in the "
                                              "artifact cache"):
        runner.run(node, {dep.id: dep})
    assert_nothing_left(runner, node.cache_key)


def test_sandbox_failure(tmp_path, repo):
    runner = make_runner(tmp_path / "work", DirectoryArtifactStore(tmp_path / "s"),
                         bwrap="/nonexistent/bwrap")
    node = chunk_node(*repo, {"build": ("true",)})
    with pytest.raises(SandboxError, match="cannot run bubblewrap"):
        runner.run(node, {})
    assert_nothing_left(runner, node.cache_key)


def test_staging_without_the_host_has_no_shell(tmp_path, repo):
    ws = WorkerSettings(tmp_path / "work", staging_over_host=False)
    runner = StepRunner(ws, GitSources(tmp_path / "m"), LocalArtifactCache(tmp_path / "c"))
    node = chunk_node(*repo, {"build": ("true",)})
    with pytest.raises(SandboxError, match="execvp sh"):
        runner.run(node, {})


def test_full_disk(tmp_path, repo):
    with small_tmpfs(tmp_path / "small", "2m") as work:
        runner = make_runner(work, DirectoryArtifactStore(tmp_path / "store"))
        node = chunk_node(*repo, {"install": (
            'dd if=/dev/zero of="$DESTDIR/big" bs=1M count=8',)})
        with pytest.raises(DiskFull, match="no space left on device") as info:
            runner.run(node, {})
        assert info.value.retryable
        assert_nothing_left(runner, node.cache_key)
        # A command that succeeds but whose output cannot be logged: no hang, same error.
        chatty = chunk_node(*repo, {"install": (
            'dd if=/dev/zero of="$DESTDIR/big" bs=1M count=8 2>/dev/null || true; '
            'yes | head -c 1000000',)}, name="chatty")
        lines: list[str] = []
        with pytest.raises(DiskFull):
            runner.run(chatty, {}, on_line=lines.append)
        assert len(lines) > 100_000  # every line still reached the callback
        assert_nothing_left(runner, chatty.cache_key)


def test_cancel_kills_the_step_tree_within_two_seconds_and_leaves_nothing(runner, repo):
    node = chunk_node(*repo, {"build": ("sleep 300 & sleep 300 & echo started; wait",)})
    token = CancelToken()
    started = threading.Event()
    failure: list[BaseException] = []

    def on_line(line: str) -> None:
        if line.endswith(" started"):
            started.set()

    def target() -> None:
        try:
            runner.run(node, {}, on_line=on_line, cancel=token)
        except BaseException as e:  # handed to the test thread
            failure.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    assert started.wait(20)
    time.sleep(0.1)
    tree = descendants(os.getpid())
    assert len(tree) >= 3, tree  # bwrap, its init, sh and the sleeps
    cancelled_at = time.monotonic()
    token.cancel()
    assert wait_gone(tree, 2.0) == set()
    assert time.monotonic() - cancelled_at < 2.0
    thread.join(5)
    assert isinstance(failure[0], Cancelled)
    assert_nothing_left(runner, node.cache_key)


def test_retry_after_a_failure_starts_clean(runner, repo):
    key = "e" * 64
    first = chunk_node(*repo, {"install": ('echo partial > "$DESTDIR/partial"', "exit 1")},
                       key=key)
    with pytest.raises(CommandFailed):
        runner.run(first, {})
    second = chunk_node(*repo, {"install": (
        'test ! -e "$DESTDIR/partial"', 'test "$(ls)" = "file"',
        'mkdir -p "$DESTDIR/etc" && cp file "$DESTDIR/etc/file"')}, key=key)
    result = runner.run(second, {})
    misc = next(a for a in result.artifacts if a.filename.endswith("-misc"))
    out = runner.settings.work_dir / "x"
    out.mkdir()
    assert artifacts.extract(misc.path, out, misc.filename) == ["etc", "etc/file"]
    assert list(runner.settings.tmp_dir.iterdir()) == []


def test_declared_devices_are_in_the_chunk_artifact(runner, repo):
    if os.geteuid() != 0:
        pytest.skip("creating device nodes needs root")
    node = chunk_node(*repo, {"install": ('mkdir -p "$DESTDIR/dev"',)})
    node.devices = ({"type": "c", "filename": "/dev/null", "major": 1, "minor": 3,
                     "permissions": "0666", "uid": 0, "gid": 0},)
    result = runner.run(node, {})
    misc = next(a for a in result.artifacts if a.filename.endswith("-misc"))
    with tarfile.open(misc.path) as tar:
        dev = tar.getmember("dev/null")
    assert dev.ischr() and (dev.devmajor, dev.devminor, dev.mode) == (1, 3, 0o666)


def test_submodules_are_checked_out_at_the_recorded_commit(runner, tmp_path):
    sub_src = tmp_path / "sub-src"
    sub_src.mkdir()
    (sub_src / "inner.txt").write_text("from the submodule\n")
    examples.make_git_repo(sub_src, tmp_path / "sub")
    top = tmp_path / "top"
    examples.make_git_repo(tmp_path / "sub-src", top)
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(top), "-c", "protocol.file.allow=always", "submodule",
                    "add", "-q", str(tmp_path / "sub"), "third-party/sub"],
                   check=True, env=env, capture_output=True)
    subprocess.run(["git", "-C", str(top), "commit", "-qm", "add sub"], check=True, env=env)
    commit = subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    node = chunk_node(top, commit, {"install": (
        'mkdir -p "$DESTDIR/etc"', 'cp third-party/sub/inner.txt "$DESTDIR/etc/"',)})
    node.submodules = {"third-party/sub": {"url": str(tmp_path / "sub")}}
    result = runner.run(node, {})
    misc = next(a for a in result.artifacts if a.filename.endswith("-misc"))
    with tarfile.open(misc.path) as tar:
        assert tar.extractfile("etc/inner.txt").read() == b"from the submodule\n"


def test_commit_on_no_branch_is_fetched_by_name(runner, tmp_path):
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    repo = tmp_path / "dangling"

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, env=env,
                              capture_output=True, text=True).stdout.strip()

    subprocess.run(["git", "init", "-q", "-b", "master", str(repo)], check=True, env=env)
    git("commit", "-q", "--allow-empty", "-m", "on master")
    git("checkout", "-q", "-b", "gone")
    (repo / "file").write_text("only on a deleted branch\n")
    git("add", "file")
    git("commit", "-q", "-m", "then deleted")
    commit = git("rev-parse", "HEAD")
    git("checkout", "-q", "master")
    git("branch", "-q", "-D", "gone")
    node = chunk_node(repo, commit, {"install": (
        'mkdir -p "$DESTDIR/etc"', 'cp file "$DESTDIR/etc/file"')})
    result = runner.run(node, {})
    misc = next(a for a in result.artifacts if a.filename.endswith("-misc"))
    with tarfile.open(misc.path) as tar:
        assert tar.extractfile("etc/file").read() == b"only on a deleted branch\n"


def test_only_the_newest_outputs_are_kept(tmp_path, repo):
    runner = make_runner(tmp_path / "work", DirectoryArtifactStore(tmp_path / "store"),
                         keep_outputs=1)
    first = runner.run(chunk_node(*repo, {"build": ("true",)}, name="first"), {})
    second = runner.run(chunk_node(*repo, {"build": ("true",)}, name="second"), {})
    assert [p.name for p in runner.settings.out_dir.iterdir()] == [second.cache_key]
    assert not first.directory.exists()
    assert runner.cache.path(first.artifacts[0].filename).exists()  # still cached

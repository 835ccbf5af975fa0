"""Staging from unpacked artifacts: what tar kept stays, and no build can change the cache.

Every test that runs steps runs twice: layered with overlayfs (a worker
running as root) and with hard links bound read-only (the fallback where a
worker cannot mount), by turning off what `mounts.available()` found.
"""

from __future__ import annotations

import os
import stat
import tarfile
import threading
import zlib
from pathlib import Path

import pytest

from distbuild import examples, mounts
from distbuild.worker import artifacts, staging, treepack, untar
from distbuild.worker.cache import DirectoryArtifactStore, LocalArtifactCache
from distbuild.worker.errors import CorruptArtifact
from distbuild.worker.sources import GitSources
from distbuild.worker.step import StepRunner, WorkerSettings
from tests.worker_graph import chunk_node

needs_mounts = pytest.mark.skipif(not mounts.available(), reason="cannot mount overlays here")

TOOL = ('mkdir -p "$DESTDIR/usr/bin" "$DESTDIR/usr/lib" "$DESTDIR/usr/share/a/empty"',
        'printf "tool-v1\\n" > "$DESTDIR/usr/bin/tool"',
        'chmod 4755 "$DESTDIR/usr/bin/tool"',
        'ln "$DESTDIR/usr/bin/tool" "$DESTDIR/usr/bin/tool-hard"',
        'ln -s tool "$DESTDIR/usr/bin/tool-link"',
        'echo "from a" > "$DESTDIR/usr/lib/shared.txt"')

CHECKS = ('test -f /usr/bin/tool && ! test -L /usr/bin/tool',
          'test "$(find /usr/bin/tool -type f)" = /usr/bin/tool',
          'test "$(stat -c %a /usr/bin/tool)" = 4755',
          'test "$(stat -c %i /usr/bin/tool)" = "$(stat -c %i /usr/bin/tool-hard)"',
          'test "$(readlink /usr/bin/tool-link)" = tool',
          'test -d /usr/share/a/empty && test -z "$(ls -A /usr/share/a/empty)"',
          'command -v sh',  # the host is there too
          'if echo evil > /usr/bin/tool; then exit 10; fi',
          'if chmod 777 /usr/bin/tool; then exit 11; fi',
          'if rm /usr/bin/tool-hard; then exit 12; fi',
          'if touch /usr/bin/new; then exit 13; fi',
          'cat /usr/bin/tool /usr/lib/shared.txt > "$DESTDIR/seen"')


@pytest.fixture(params=["overlay", "links"])
def mode(request, monkeypatch):
    if request.param == "overlay" and not mounts.available():
        pytest.skip("cannot mount overlays here")
    if request.param == "links":
        monkeypatch.setattr(mounts, "_available", False)
    return request.param


@pytest.fixture
def repo(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("content\n")
    return tmp_path / "repo", examples.make_git_repo(src, tmp_path / "repo")


def make_runner(tmp_path: Path) -> StepRunner:
    return StepRunner(WorkerSettings(tmp_path / "work", staging_over_host=True),
                      GitSources(tmp_path / "mirrors"),
                      LocalArtifactCache(tmp_path / "cache",
                                         DirectoryArtifactStore(tmp_path / "store")))


def run_chunk(runner, repo, name, commands, deps=()):
    node = chunk_node(*repo, {"install": commands}, name=name,
                      depends=tuple(d.id for d in deps))
    nodes = {d.id: d for d in deps}
    result = runner.run(node, nodes)
    return node, result


def seen(runner, result) -> str:
    misc = next(a for a in result.artifacts if a.filename.endswith("-misc"))
    out = runner.settings.work_dir / f"seen-{result.cache_key}"
    untar.extract(misc.path, out, misc.filename)
    return (out / "seen").read_text()


def test_staged_files_are_what_tar_kept_and_cannot_change_the_cache(tmp_path, repo, mode):
    runner = make_runner(tmp_path)
    a, _ = run_chunk(runner, repo, "a", TOOL)
    _, first = run_chunk(runner, repo, "b", CHECKS, deps=[a])
    assert seen(runner, first) == "tool-v1\nfrom a\n"
    # The next step sees the original, and so does the cache's own tree.
    _, second = run_chunk(runner, repo, "c", CHECKS[-1:], deps=[a])
    assert seen(runner, second) == "tool-v1\nfrom a\n"
    tree = runner.cache.unpacked(f"{a.cache_key}.chunk.a-bins")
    assert (tree / "usr/bin/tool").read_text() == "tool-v1\n"
    assert stat.S_IMODE((tree / "usr/bin/tool").stat().st_mode) == 0o4755
    assert (tree / "usr/bin/tool-hard").exists()


def test_of_two_artifacts_holding_a_path_the_later_staged_wins(tmp_path, repo, mode):
    runner = make_runner(tmp_path)
    a, _ = run_chunk(runner, repo, "a", TOOL)
    c, _ = run_chunk(runner, repo, "c", (
        'mkdir -p "$DESTDIR/usr/lib"', 'echo "from c" > "$DESTDIR/usr/lib/shared.txt"'),
        deps=[a])
    _, result = run_chunk(runner, repo, "d", CHECKS[-1:], deps=[a, c])
    assert seen(runner, result) == "tool-v1\nfrom c\n"


def make_tree(root: Path, marker: str) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin" / marker).write_text(marker)
    (root / "usr/lib").mkdir()
    (root / "usr/lib/shared").write_text(marker)
    return root


def in_thread(function):
    """Run `function` in a thread of its own, as a step runs: its mounts die with it."""
    out: list = []

    def target():
        try:
            out.append(function())
        except BaseException as e:  # re-raised in the test's thread
            out.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


@needs_mounts
def test_a_staging_area_is_one_read_only_overlay_and_gone_with_the_step(tmp_path):
    layers = [make_tree(tmp_path / f"t{i}", f"m{i}") for i in range(3)]

    def look():
        staged = staging.stage(tmp_path / "work", layers, over_host=False)
        root = staged.root
        found = (sorted(os.listdir(root / "usr/bin")), (root / "usr/lib/shared").read_text())
        mounts_here = [line.split()[4] for line in
                       Path("/proc/thread-self/mountinfo").read_text().splitlines()
                       ].count(str(root))
        staged.close()
        return found, mounts_here, os.listdir(root)

    found, mounts_here, after = in_thread(look)
    assert found == (["m0", "m1", "m2"], "m2")
    assert mounts_here == 1
    assert after == []
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


@needs_mounts
def test_a_steps_writable_overlays_are_volatile(tmp_path):
    # Their upper layers go with the step: unmounting must not sync the whole disk.
    layers = [make_tree(tmp_path / "t", "m")]

    def options():
        staged = [staging.stage(tmp_path / "chunk", layers, over_host=False),
                  staging.system_root(tmp_path / "system", layers)]
        try:
            return [line.split(" - ")[1] for line in
                    Path("/proc/thread-self/mountinfo").read_text().splitlines()
                    if line.split()[4] in {str(s.root) for s in staged}]
        finally:
            for s in staged:
                s.close()

    found = in_thread(options)
    assert len(found) == 2 and all("volatile" in line for line in found), found


@needs_mounts
def test_more_layers_than_overlayfs_takes_are_grouped(tmp_path):
    layers = []
    for i in range(mounts.MAX_LAYERS + 20):
        (tmp_path / f"l{i}/usr/share").mkdir(parents=True)
        (tmp_path / f"l{i}/usr/share/f{i}").write_text(str(i))
        layers.append(tmp_path / f"l{i}")

    def look():
        staged = staging.stage(tmp_path / "work", layers, over_host=False)
        try:
            return len(os.listdir(staged.root / "usr/share"))
        finally:
            staged.close()

    assert in_thread(look) == mounts.MAX_LAYERS + 20


@needs_mounts
def test_system_root_is_copy_on_write_and_packs_what_tar_kept(tmp_path):
    a = make_tree(tmp_path / "a", "a")
    os.chmod(a / "usr/bin/a", 0o4755)
    os.link(a / "usr/bin/a", a / "usr/bin/a-hard")
    os.symlink("a", a / "usr/bin/a-link")
    (a / "empty").mkdir()
    b = make_tree(tmp_path / "b", "b")

    def assemble():
        staged = staging.system_root(tmp_path / "work", [a, b])
        try:
            with open(staged.root / "usr/lib/shared", "a") as f:
                f.write("+integrated")
            return treepack.pack_tree(staged.root, tmp_path / "sys.tgz", "sys")
        finally:
            staged.close()

    packed = in_thread(assemble)
    assert (b / "usr/lib/shared").read_text() == "b"
    with tarfile.open(packed.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("usr/lib/shared").read() == b"b+integrated"
    assert members["usr/bin/a"].isreg() and members["usr/bin/a"].mode == 0o4755
    assert members["usr/bin/a-hard"].islnk() and members["usr/bin/a-hard"].linkname == "usr/bin/a"
    assert members["usr/bin/a-link"].issym() and members["usr/bin/a-link"].linkname == "a"
    assert members["empty"].isdir()
    assert list(members) == sorted(members)
    assert packed.sha256 == artifacts.describe(packed.path, "sys").sha256


def test_tree_packing_writes_what_artifact_packing_writes_byte_for_byte(tmp_path):
    root = make_tree(tmp_path / "t", "x")
    os.symlink("x", root / "usr/bin/y")
    os.link(root / "usr/bin/x", root / "usr/bin/x2")
    (root / ("d" * 120)).mkdir()  # a long name takes a pax header
    (root / "big").write_bytes(os.urandom(3 << 20))  # several deflate blocks
    (root / "many").mkdir()
    for i in range(300):  # read ahead in several batches
        (root / "many" / f"f{i}").write_bytes(os.urandom(i * 7))
    names = treepack.tree_names(root)
    expected = artifacts.pack(root, names, tmp_path / "a.tgz", "a")
    packed = treepack.pack_tree(root, tmp_path / "b.tgz", "b")
    with tarfile.open(packed.path) as tar:
        assert tar.extractfile("big").read() == (root / "big").read_bytes()
    assert zlib.decompress(packed.path.read_bytes(), 31) == zlib.decompress(
        expected.path.read_bytes(), 31)


def test_unpacking_keeps_what_tar_kept(tmp_path):
    src = tmp_path / "src"
    (src / "usr/bin").mkdir(parents=True)
    (src / "usr/bin/t").write_text("t")
    os.chmod(src / "usr/bin/t", 0o2755)
    os.link(src / "usr/bin/t", src / "usr/bin/t2")
    os.symlink("/usr/bin/t", src / "usr/bin/abs")
    (src / "empty").mkdir()
    (src / "ro").mkdir()
    (src / "ro/f").write_text("f")
    os.chmod(src / "ro", 0o555)
    os.mkfifo(src / "fifo")
    names = treepack.tree_names(src)
    packed = artifacts.pack(src, names, tmp_path / "a.tgz", "a")
    out = tmp_path / "out"
    assert untar.extract(packed.path, out, "a") == names
    assert stat.S_IMODE((out / "usr/bin/t").stat().st_mode) == 0o2755
    assert (out / "usr/bin/t").stat().st_ino == (out / "usr/bin/t2").stat().st_ino
    assert os.readlink(out / "usr/bin/abs") == "/usr/bin/t"
    assert (out / "empty").is_dir() and stat.S_IMODE((out / "ro").stat().st_mode) == 0o555
    assert stat.S_ISFIFO((out / "fifo").lstat().st_mode)


def evil_tarball(path: Path, *members: tuple[str, str, str]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, target
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, target
            else:
                info.size = len(target)
            tar.addfile(info, __import__("io").BytesIO(target.encode()) if kind == "file"
                        else None)
    return path


@pytest.mark.parametrize("members", [
    [("/etc/evil", "file", "x")],
    [("usr/../../evil", "file", "x")],
    [("usr", "sym", "/tmp"), ("usr/evil", "file", "x")],
    [("link", "hard", "/etc/passwd")],
], ids=["absolute", "dotdot", "through-symlink", "hard-link-outside"])
def test_unpacking_refuses_members_that_leave_the_tree(tmp_path, members):
    tarball = evil_tarball(tmp_path / "evil.tgz", *members)
    with pytest.raises(CorruptArtifact, match=r"K\.chunk\.evil"):
        untar.extract(tarball, tmp_path / "out", "K.chunk.evil")
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


def test_a_damaged_tarball_is_a_corrupt_artifact(tmp_path):
    src = make_tree(tmp_path / "src", "x")
    packed = artifacts.pack(src, treepack.tree_names(src), tmp_path / "a.tgz", "a")
    data = bytearray(packed.path.read_bytes())
    (tmp_path / "cut.tgz").write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptArtifact, match="cannot unpack"):
        untar.extract(tmp_path / "cut.tgz", tmp_path / "out", "a")


def test_trim_counts_and_removes_unpacked_trees_but_not_held_ones(tmp_path):
    store = DirectoryArtifactStore(tmp_path / "store")
    cache = LocalArtifactCache(tmp_path / "cache", store)
    src = tmp_path / "src"
    (src / "usr").mkdir(parents=True)
    (src / "usr/big").write_bytes(b"x" * 40000)
    for name in ("K.chunk.old", "K.chunk.held", "K.chunk.new"):
        store.upload([artifacts.pack(src, ["usr/big"], tmp_path / name, name)])
    trees = {name: cache.prepare(name) for name in ("K.chunk.old", "K.chunk.held",
                                                    "K.chunk.new")}
    for age, name in ((3000, "K.chunk.old"), (2000, "K.chunk.held"), (10, "K.chunk.new")):
        image = cache.unpacked_dir / f"{name}.erofs"  # where kept as an image, its time
        for path in (trees[name], cache.path(name), *([image] if image.exists() else [])):
            os.utime(path, (os.path.getmtime(path) - age,) * 2)
    with cache.holding([trees["K.chunk.held"]]):
        # Tarballs are a few hundred bytes: only the trees' 40 KB make this trim.
        assert cache.trim(50000, min_age=600) == ["K.chunk.old"]
    assert not trees["K.chunk.old"].exists() and not cache.path("K.chunk.old").exists()
    assert trees["K.chunk.held"].exists()
    assert cache.trim(50000, min_age=600) == ["K.chunk.held"]
    assert (cache.unpacked("K.chunk.new") / "usr/big").stat().st_size == 40000


def test_unpacked_trees_are_dropped_after_a_reboot(tmp_path, monkeypatch):
    store = DirectoryArtifactStore(tmp_path / "store")
    src = make_tree(tmp_path / "src", "x")
    store.upload([artifacts.pack(src, ["usr/bin/x"], tmp_path / "K.chunk.a", "K.chunk.a")])
    tree = LocalArtifactCache(tmp_path / "cache", store).unpacked("K.chunk.a")
    (tmp_path / "cache/.unpacked/.boot").write_text("another boot")
    cache = LocalArtifactCache(tmp_path / "cache", store)
    assert not tree.exists()
    assert (cache.unpacked("K.chunk.a") / "usr/bin/x").read_text() == "x"


class CountingStore(DirectoryArtifactStore):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.downloaded: list[str] = []

    def download(self, filename: str, dest: Path) -> str | None:
        self.downloaded.append(filename)
        return super().download(filename, dest)


def test_staging_downloads_only_artifacts_that_hold_something(tmp_path, repo):
    store = CountingStore(tmp_path / "store")
    builder = StepRunner(WorkerSettings(tmp_path / "builder", staging_over_host=True),
                         GitSources(tmp_path / "mirrors"),
                         LocalArtifactCache(tmp_path / "builder-cache", store))
    a, built = run_chunk(builder, repo, "a", ('mkdir -p "$DESTDIR/usr/bin"', TOOL[1]))
    store.upload(built.files)
    fresh = StepRunner(WorkerSettings(tmp_path / "fresh", staging_over_host=True),
                       GitSources(tmp_path / "mirrors"),
                       LocalArtifactCache(tmp_path / "fresh-cache", store))
    _, result = run_chunk(fresh, repo, "b", ('cat /usr/bin/tool > "$DESTDIR/seen"',), deps=[a])
    assert seen(fresh, result) == "tool-v1\n"
    assert store.downloaded == [f"{a.cache_key}.chunk.a-bins"]
    meta = __import__("json").loads(result.meta.path.read_text())
    assert {i["filename"] for i in meta["inputs"]} == set(a.artifact_filenames())


def test_the_build_directory_is_a_clone_with_branches_and_tags(tmp_path, repo):
    import subprocess
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@127.0.0.1",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@127.0.0.1"}
    subprocess.run(["git", "-C", str(repo[0]), "tag", "-a", "v1.2", "-m", "v1.2", repo[1]],
                   check=True, env=env)
    runner = make_runner(tmp_path)
    _, result = run_chunk(runner, repo, "g", (
        '{ git describe --tags; git branch -r; git status --porcelain; cat file; } '
        '> "$DESTDIR/seen"',))
    assert seen(runner, result) == "v1.2\n  origin/master\ncontent\n"


@needs_mounts
@pytest.mark.parametrize("own_etc", [True, False], ids=["etc-merged", "etc-host-only"])
def test_layered_over_the_host_secrets_stay_hidden(tmp_path, own_etc):
    from distbuild import sandbox
    from distbuild.worker.context import WorkerSettings as Settings

    tree = make_tree(tmp_path / "t", "x")
    if own_etc:
        (tree / "etc").mkdir()
        (tree / "etc/staged.conf").write_text("staged\n")
    settings = Settings(tmp_path / "work")
    lines: list[str] = []

    def run():
        staged = staging.stage(tmp_path / "staging", [tree], over_host=True,
                               hidden=settings.hidden_paths(), mask_dir=tmp_path / "mask")
        try:
            return sandbox.run(sandbox.SandboxSpec(
                argv=("sh", "-c", "cat /etc/shadow 2>/dev/null | wc -c; ls -A /etc/ssh 2>/dev/null"
                      " | wc -l; cat /etc/staged.conf 2>/dev/null || echo none; "
                      "test -f /etc/passwd && ! test -L /etc/passwd && echo host-file; "
                      "cat /usr/bin/x"),
                root=staged.root, layout=staged.layout, binds=staged.binds, masks=staged.masks,
                env={"PATH": "/usr/bin:/bin"}), on_line=lines.append)
        finally:
            staged.close()

    assert in_thread(run) == 0, lines
    assert lines == ["0", "0", "staged" if own_etc else "none", "host-file", "x"]


def test_without_mounts_the_example_system_builds_the_same(tmp_path, monkeypatch):
    """The fallback a worker that cannot mount takes, end to end: hard-linked staging
    areas, and a system root unpacked from the tarballs for integration to write in."""
    from tests.worker_graph import example_graph

    monkeypatch.setattr(mounts, "_available", False)
    examples.make_all(tmp_path / "repos")
    graph = example_graph(tmp_path / "repos", tmp_path / "resolver")
    store = DirectoryArtifactStore(tmp_path / "store")
    runner = StepRunner(WorkerSettings(tmp_path / "work", staging_over_host=True),
                        GitSources(tmp_path / "mirrors"), LocalArtifactCache(tmp_path / "c", store))
    for node_id in graph.order:
        result = runner.run(graph.nodes[node_id], graph.nodes)
        store.upload(result.files)
    with tarfile.open(result.artifacts[0].path) as tar:
        assert tar.extractfile("etc/hello-version").read() == b"hello 1.0 (libgreet 1.0)\n"
        assert tar.getmember("usr/bin/hello").isreg()

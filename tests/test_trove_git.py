"""git daemon, ref resolution and the mirror cache against a real trove process."""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from distbuild.errors import ResolveError
from distbuild.trove.client import CacheClient
from distbuild.trove.mirror import MirrorCache
from distbuild.trove.refs import GitResolver, Resolved, expand_alias
from tests.trove_process import TroveProcess, pid_alive, wait_gone

pytestmark = pytest.mark.slow


def git(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


def make_source(work: Path) -> dict:
    """A repository with two commits on master, a branch and an annotated tag."""
    work.mkdir()
    git("init", "-q", "-b", "master", cwd=work)
    (work / "hello.c").write_text('int main(void) { return 0; }\n')
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    first = git("rev-parse", "HEAD", cwd=work)
    git("tag", "-a", "-m", "v1", "v1.0", cwd=work)
    (work / "README").write_text("hello\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "second", cwd=work)
    git("branch", "stable", first, cwd=work)
    return {"master": git("rev-parse", "HEAD", cwd=work), "first": first,
            "master_tree": git("rev-parse", "HEAD^{tree}", cwd=work),
            "first_tree": git("rev-parse", f"{first}^{{tree}}", cwd=work)}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("trove-git")
    shas = make_source(root / "work")
    trove = TroveProcess(root)
    trove.git_dir.mkdir(parents=True)
    git("clone", "-q", "--bare", str(root / "work"), str(trove.git_dir / "delta" / "hello.git"))
    trove.start()
    yield trove, shas
    trove.stop()


def test_clone_and_ls_remote_through_git_daemon(served, tmp_path):
    trove, shas = served
    url = f"{trove.git_url}/delta/hello"
    heads = git("ls-remote", url)
    assert f"{shas['master']}\trefs/heads/master" in heads
    assert f"{shas['first']}\trefs/heads/stable" in heads
    assert "refs/tags/v1.0" in heads
    git("clone", "-q", url, str(tmp_path / "c"))
    assert (tmp_path / "c" / "README").read_text() == "hello\n"


def test_git_daemon_refuses_pushes(served, tmp_path):
    trove, shas = served
    git("clone", "-q", f"{trove.git_url}/delta/hello", str(tmp_path / "c"))
    (tmp_path / "c" / "evil").write_text("x")
    git("add", ".", cwd=tmp_path / "c")
    git("commit", "-q", "-m", "evil", cwd=tmp_path / "c")
    with pytest.raises(subprocess.CalledProcessError) as e:
        git("push", "origin", "HEAD:master", cwd=tmp_path / "c")
    assert "access denied" in e.value.stderr or "not enabled" in e.value.stderr
    assert git("ls-remote", f"{trove.git_url}/delta/hello", "master").startswith(shas["master"])


def test_resolver_names_commit_and_tree(served, tmp_path):
    trove, shas = served
    resolver = GitResolver(MirrorCache(tmp_path / "mirrors"))
    url = expand_alias("upstream:hello", trove.git_url)
    assert url == f"{trove.git_url}/delta/hello"
    assert resolver.resolve(url, "master") == Resolved(shas["master"], shas["master_tree"])
    got = resolver.resolve(url, "v1.0")
    assert (got.commit, got.tree) == (shas["first"], shas["first_tree"])
    assert resolver.resolve(url, "stable").commit == shas["first"]
    assert resolver.resolve(url, shas["first"]).tree == shas["first_tree"]
    # A local bare repository resolves in place.
    local = GitResolver().resolve(str(trove.git_dir / "delta" / "hello.git"), "master")
    assert local.commit == shas["master"]


def test_resolver_asks_the_trove_for_its_own_repositories(served, tmp_path):
    trove, shas = served
    mirrors = MirrorCache(tmp_path / "mirrors")
    resolver = GitResolver(mirrors, trove_git_url=trove.git_url,
                           sha1s=CacheClient(trove.cache_url).sha1s)
    url = f"{trove.git_url}/delta/hello"
    assert resolver.resolve(url, "master") == Resolved(shas["master"], shas["master_tree"])
    assert resolver.resolve(url, "v1.0") == Resolved(shas["first"], shas["first_tree"])
    assert mirrors.fetches == 0 and not list(mirrors.root.glob("*.git"))
    # What the trove cannot name goes through the mirror, whose error says what is wrong.
    with pytest.raises(ResolveError, match=r"delta/hello: ref 'no-such-branch' not found"):
        resolver.resolve(url, "no-such-branch")
    assert mirrors.fetches == 1
    down = GitResolver(MirrorCache(tmp_path / "m2"), trove_git_url=trove.git_url,
                       sha1s=CacheClient("http://127.0.0.1:9/").sha1s)
    assert down.resolve(url, "stable").commit == shas["first"]


def test_resolver_errors_name_repo_and_ref(served, tmp_path):
    trove, _ = served
    resolver = GitResolver(MirrorCache(tmp_path / "mirrors"))
    url = f"{trove.git_url}/delta/hello"
    with pytest.raises(ResolveError, match=r"delta/hello: ref 'no-such-branch' not found"):
        resolver.resolve(url, "no-such-branch")
    with pytest.raises(ResolveError, match=r"delta/hello: ref '0{40}' not found"):
        resolver.resolve(url, "0" * 40)
    missing = f"{trove.git_url}/delta/nope"
    with pytest.raises(ResolveError, match=r"delta/nope: cannot resolve ref 'master'"):
        resolver.resolve(missing, "master")
    with pytest.raises(ResolveError, match=r"nowhere: cannot resolve ref 'master': "
                                           r"repository not found"):
        GitResolver().resolve(str(tmp_path / "nowhere"), "master")
    # Nothing half-made is left for a repository that does not exist.
    made = [p.name for p in (tmp_path / "mirrors").iterdir() if not p.name.endswith(".lock")]
    assert len(made) == 1 and "delta_hello" in made[0]


def test_second_use_of_a_commit_fetches_nothing(served, tmp_path):
    trove, shas = served
    mirrors = MirrorCache(tmp_path / "mirrors")
    url = f"{trove.git_url}/delta/hello"
    mirrors.checkout(url, shas["first"], tmp_path / "one")
    assert mirrors.fetches == 1
    assert not (tmp_path / "one" / "README").exists()
    assert (tmp_path / "one" / "hello.c").exists()
    mirrors.checkout(url, shas["master"], tmp_path / "two")
    mirrors.checkout(url, shas["first"], tmp_path / "three")
    assert mirrors.fetches == 1
    assert (tmp_path / "two" / "README").read_text() == "hello\n"


def test_mirror_works_with_the_trove_unreachable(tmp_path):
    source = make_source(tmp_path / "work")
    trove = TroveProcess(tmp_path / "t")
    trove.git_dir.mkdir(parents=True)
    git("clone", "-q", "--bare", str(tmp_path / "work"), str(trove.git_dir / "r.git"))
    trove.start()
    url = f"{trove.git_url}/r"
    mirrors = MirrorCache(tmp_path / "mirrors")
    try:
        mirrors.ensure(url, source["master"])
    finally:
        trove.stop()
    # The trove is gone: a commit already mirrored still resolves and checks out.
    assert GitResolver(mirrors).resolve(url, source["first"]).tree == source["first_tree"]
    mirrors.checkout(url, source["first"], tmp_path / "co")
    with pytest.raises(ResolveError, match="cannot fetch"):
        mirrors.ensure(url, "master")


def _daemon_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children
            if b"daemon" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_git_daemon_is_restarted_and_dies_with_the_trove(tmp_path):
    trove = TroveProcess(tmp_path).start()
    try:
        first = trove.info["git_daemon_pid"]
        os.kill(first, signal.SIGKILL)
        assert wait_gone(first)
        deadline = time.monotonic() + 10
        while not [p for p in _daemon_children(trove.proc.pid) if p != first]:
            assert time.monotonic() < deadline, trove.log()
            time.sleep(0.05)
        (second,) = _daemon_children(trove.proc.pid)
        subprocess.run(["git", "init", "-q", "--bare", str(trove.git_dir / "x.git")], check=True)
        deadline = time.monotonic() + 10
        while subprocess.run(["git", "ls-remote", f"{trove.git_url}/x"],
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, trove.log()
            time.sleep(0.1)
        assert "restarting" in trove.log()
        # Killed without any chance to clean up, the trove still takes git daemon along.
        trove.proc.kill()
        trove.proc.wait()
        assert wait_gone(second), "git daemon outlived a SIGKILLed trove"
    finally:
        trove.stop()
    assert not pid_alive(first)


def test_morph_cache_server_sha1s_endpoint(served):
    trove, shas = served
    base = trove.cache_url + "1.0/sha1s?"
    for repo in ("upstream:hello", "delta/hello", f"{trove.git_url}/delta/hello"):
        with urllib.request.urlopen(base + urllib.parse.urlencode(
                {"repo": repo, "ref": "v1.0"})) as resp:
            assert json.loads(resp.read()) == {"repo": repo, "ref": "v1.0",
                                               "sha1": shas["first"], "tree": shas["first_tree"]}
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(base + "repo=upstream:hello&ref=nope")
    assert e.value.code == 404 and "ref 'nope' not found" in e.value.read().decode()

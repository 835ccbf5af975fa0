"""Authenticated writes over SSH and `distbuild trove import`, against a real trove process."""

import os
import stat
import subprocess
import tarfile

import pytest
import yaml

from distbuild import ssh
from tests.conftest import run_distbuild
from tests.test_trove_git import git, make_source
from tests.trove_process import TroveProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A trove with an SSH server, an authorized key, and a client config trusting it."""
    root = tmp_path_factory.mktemp("trove-ssh")
    keys = root / "keys"
    host = ssh.generate_keypair(keys / "trove_host_key", "trove")
    user = ssh.generate_keypair(keys / "initiator", "initiator")
    ssh.generate_keypair(keys / "stranger", "stranger")
    (keys / "authorized_keys").write_text(user.line() + "\n")
    trove = TroveProcess(root / "trove", "--authorized-keys", str(keys / "authorized_keys"),
                         "--host-key", str(keys / "trove_host_key")).start()
    port = trove.info["ssh_port"]
    (keys / "known_hosts").write_text(ssh.known_hosts_line("127.0.0.1", port, host) + "\n")
    conf = root / "network.yaml"
    conf.write_text(yaml.safe_dump({
        "trove_git_url": trove.git_url, "artifact_cache_url": trove.cache_url,
        "trove_ssh_url": f"ssh://git@127.0.0.1:{port}", "identity": "keys/initiator",
        "known_hosts": "keys/known_hosts", "controller_initiator_address": "127.0.0.1"}))
    yield {"trove": trove, "conf": conf, "keys": keys, "root": root, "host": host}
    trove.stop()


def ssh_cmd(net, key="initiator", *extra):
    keys = net["keys"]
    return ["ssh", "-i", str(keys / key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={keys / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
            "-p", str(net["trove"].info["ssh_port"]), *extra, "git@127.0.0.1"]


def test_keys_are_openssh_format_and_private_keys_0600(net):
    keys = net["keys"]
    assert stat.S_IMODE(os.stat(keys / "initiator").st_mode) == 0o600
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(keys / "initiator.pub")],
                         capture_output=True, text=True, check=True).stdout
    assert ssh.public_key_of(keys / "initiator").fingerprint in out


def test_import_a_directory_then_clone_it_anonymously(net, tmp_path):
    src = tmp_path / "hello"
    src.mkdir()
    (src / "hello.c").write_text("int main(void) { return 0; }\n")
    (src / ".gitignore").write_text("*.c\n")
    out = run_distbuild("trove", "import", "delta/hello", str(src), "--config", str(net["conf"]))
    assert out.returncode == 0, out.stderr
    assert f"{net['trove'].git_url}/delta/hello" in out.stdout
    git("clone", "-q", f"{net['trove'].git_url}/delta/hello", str(tmp_path / "c"))
    assert (tmp_path / "c" / "hello.c").exists()  # ignore files do not hide source
    first = git("rev-parse", "HEAD", cwd=tmp_path / "c")
    # Importing the same content again makes the same commit: nothing changes.
    run_distbuild("trove", "import", "delta/hello", str(src), "--config", str(net["conf"]),
                  check=True)
    assert git("ls-remote", f"{net['trove'].git_url}/delta/hello", "master").startswith(first)


def test_import_a_git_repository_with_all_branches_and_tags(net, tmp_path):
    shas = make_source(tmp_path / "work")
    env = {"DISTBUILD_CONFIG": str(net["conf"])}
    run_distbuild("trove", "import", "baserock/hello", str(tmp_path / "work"), env=env,
                  check=True)
    refs = git("ls-remote", f"{net['trove'].git_url}/baserock/hello")
    assert f"{shas['master']}\trefs/heads/master" in refs
    assert f"{shas['first']}\trefs/heads/stable" in refs
    assert "refs/tags/v1.0" in refs


def test_import_under_a_baserock_alias(net, tmp_path):
    (tmp_path / "f").write_text("x\n")
    run_distbuild("trove", "import", "upstream:aliased", str(tmp_path), "--config",
                  str(net["conf"]), check=True)
    assert "refs/heads/master" in git("ls-remote", f"{net['trove'].git_url}/delta/aliased")


def test_import_from_a_git_url(net, tmp_path):
    make_source(tmp_path / "work")
    run_distbuild("trove", "import", "delta/upstream-copy", str(tmp_path / "work"),
                  "--config", str(net["conf"]), check=True)
    url = f"{net['trove'].git_url}/delta/upstream-copy"
    run_distbuild("trove", "import", "delta/second-copy", url, "--config", str(net["conf"]),
                  check=True)
    assert git("ls-remote", f"{net['trove'].git_url}/delta/second-copy") == git("ls-remote", url)


def test_import_a_tarball_strips_its_top_directory(net, tmp_path):
    top = tmp_path / "binutils-2.25"
    top.mkdir()
    (top / "configure").write_text("#!/bin/sh\n")
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as tar:
        tar.add(top, arcname="binutils-2.25")
    run_distbuild("trove", "import", "delta/binutils-tarball", str(tmp_path / "b.tar.gz"),
                  "--config", str(net["conf"]), check=True)
    git("clone", "-q", f"{net['trove'].git_url}/delta/binutils-tarball", str(tmp_path / "c"))
    assert (tmp_path / "c" / "configure").read_text() == "#!/bin/sh\n"


def test_a_key_not_in_authorized_keys_cannot_push(net, tmp_path):
    src = tmp_path / "x"
    src.mkdir()
    (src / "f").write_text("x")
    out = run_distbuild("trove", "import", "delta/x", str(src), "--config", str(net["conf"]),
                        "--identity", str(net["keys"] / "stranger"))
    assert out.returncode == 2
    assert "push to ssh://git@127.0.0.1" in out.stderr and "Traceback" not in out.stderr
    assert not (net["trove"].git_dir / "delta" / "x.git").exists()


def test_an_unknown_host_key_is_refused_showing_its_fingerprint(net, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    out = run_distbuild("trove", "import", "delta/y", str(tmp_path), "--config",
                        str(net["conf"]), "--known-hosts", str(empty))
    assert out.returncode == 2
    assert "unknown host key ssh-ed25519 " + net["host"].fingerprint in out.stderr
    assert ssh.known_hosts_line("127.0.0.1", net["trove"].info["ssh_port"], net["host"]) \
        in out.stderr
    changed = tmp_path / "changed"
    other = ssh.generate_keypair(tmp_path / "other")
    changed.write_text(ssh.known_hosts_line("127.0.0.1", net["trove"].info["ssh_port"], other))
    out = run_distbuild("trove", "import", "delta/y", str(tmp_path), "--config",
                        str(net["conf"]), "--known-hosts", str(changed))
    assert "HOST KEY CHANGED" in out.stderr and net["host"].fingerprint in out.stderr


@pytest.mark.parametrize("command, reason", [
    ("ls /", "only git-receive-pack and git-upload-pack"),
    ("git-receive-pack '/../../etc'", "invalid repository name"),
    ("git-upload-pack '/delta/nothing-here'", "no such repository"),
    ("git-receive-pack '/a;rm -rf x'", "invalid repository name"),
])
def test_other_commands_and_bad_names_are_refused(net, command, reason):
    proc = subprocess.run([*ssh_cmd(net), command], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert reason in proc.stderr
    assert not (net["trove"].root / "etc.git").exists()


def test_no_shell(net):
    proc = subprocess.run(ssh_cmd(net), capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode != 0 and "no shell here" in proc.stderr


def test_push_and_fetch_over_ssh_with_git_itself(net, tmp_path):
    shas = make_source(tmp_path / "work")
    env = dict(os.environ, GIT_SSH_COMMAND=" ".join(ssh_cmd(net)[:-1]))
    url = f"ssh://git@127.0.0.1:{net['trove'].info['ssh_port']}/team/tool"
    subprocess.run(["git", "push", "-q", url, "master"], cwd=tmp_path / "work", env=env,
                   check=True, capture_output=True, timeout=60)
    subprocess.run(["git", "clone", "-q", url, str(tmp_path / "c")], env=env, check=True,
                   capture_output=True, timeout=60)
    assert git("rev-parse", "HEAD", cwd=tmp_path / "c") == shas["master"]

import base64
import hashlib
import hmac
import os
import stat
import subprocess

import pytest

from distbuild import ssh


def test_generated_key_pair_is_openssh_and_private_is_0600(tmp_path):
    pub = ssh.generate_keypair(tmp_path / "k", "worker-1")
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    assert (tmp_path / "k.pub").read_text() == pub.line() + "\n"
    assert pub.type == "ssh-ed25519" and pub.comment == "worker-1"
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(tmp_path / "k")], capture_output=True,
                         text=True, check=True).stdout
    assert out.split()[:2] == pub.line().split()[:2]
    assert ssh.public_key_of(tmp_path / "k") == ssh.PublicKey(pub.type, pub.blob)
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")],
                            capture_output=True, text=True, check=True).stdout
    assert pub.fingerprint in listed


def test_authorized_keys_errors_name_file_and_line(tmp_path):
    good = ssh.generate_keypair(tmp_path / "k")
    path = tmp_path / "authorized_keys"
    path.write_text(f"# team keys\n\n{good.line()}\nssh-ed25519 !!notbase64!!\n")
    with pytest.raises(ssh.SSHKeyError, match=r"authorized_keys:4: key is not valid base64"):
        ssh.read_authorized_keys(path)
    path.write_text(f"{good.line()}\n")
    assert ssh.read_authorized_keys(path) == [good]
    with pytest.raises(ssh.SSHKeyError, match="cannot read authorized keys"):
        ssh.read_authorized_keys(tmp_path / "missing")


def test_host_key_checks_plain_and_hashed_known_hosts(tmp_path):
    key = ssh.generate_keypair(tmp_path / "host")
    other = ssh.generate_keypair(tmp_path / "other")
    kh = tmp_path / "known_hosts"
    kh.write_text(ssh.known_hosts_line("127.0.0.1", 2222, key) + "\n")
    ssh.check_host_key(kh, "127.0.0.1", 2222, key)
    with pytest.raises(ssh.HostKeyError, match=r"unknown host key .* add this line"):
        ssh.check_host_key(kh, "127.0.0.1", 2223, key)
    with pytest.raises(ssh.HostKeyError, match="HOST KEY CHANGED") as e:
        ssh.check_host_key(kh, "127.0.0.1", 2222, other)
    assert other.fingerprint in str(e.value)
    # OpenSSH's HashKnownHosts form: |1|salt|HMAC-SHA1(salt, "[host]:port").
    salt = os.urandom(20)
    digest = hmac.new(salt, b"[127.0.0.1]:2222", hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    kh.write_text(f"{hashed} {key.type} {base64.b64encode(key.blob).decode()}\n")
    ssh.check_host_key(kh, "127.0.0.1", 2222, key)
    assert ssh.known_keys(tmp_path / "none", "127.0.0.1", 22) == []
    assert ssh.known_hosts_line("h", 22, key).startswith("h ssh-ed25519 ")

"""The bubblewrap sandbox, really started: no network, no writes outside its binds."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from distbuild import sandbox
from distbuild.sandbox import Bind, SandboxError, SandboxSpec


def layered(root: Path, command: str, *binds: Bind, env=None) -> tuple[int, list[str]]:
    """Run `command` with `root` merged over the host, as chunk steps do."""
    lines: list[str] = []
    spec = SandboxSpec(argv=("sh", "-e", "-c", command), root=None,
                       layout=sandbox.merged_layout(root),
                       binds=(*sandbox.host_binds(), *binds),
                       masks=sandbox.host_masks(root.parent / "empty"),
                       env=env or {"PATH": "/usr/bin:/bin"})
    return sandbox.run(spec, on_line=lines.append), lines


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "root"
    (root / "usr" / "include").mkdir(parents=True)
    (root / "usr" / "include" / "staged.h").write_text("#define STAGED 42\n")
    return root


def test_network_is_unreachable_from_inside(root):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        # The listener is real: the host reaches it.
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        probe = ("python3 -c 'import socket,sys\n"
                 f"try:\n socket.create_connection((\"127.0.0.1\", {port}), timeout=2)\n"
                 "except OSError as e:\n print(\"refused:\", e); sys.exit(7)\n"
                 "print(\"connected\")'")
        status, lines = layered(root, probe)
    assert status == 7, lines
    assert not any(line == "connected" for line in lines)


def test_no_network_interfaces_but_loopback(root):
    status, lines = layered(root, "ls /sys/class/net 2>/dev/null || cat /proc/net/dev")
    assert status == 0
    text = " ".join(lines)
    assert "eth0" not in text and "ens" not in text


def test_writes_outside_the_writable_binds_fail(root, tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    marker = f"distbuild-escape-{uuid.uuid4().hex}"
    host_target = Path("/etc") / marker
    status, lines = layered(
        root,
        f"for p in /usr/{marker} /etc/{marker} /{marker} /.host/etc/{marker} "
        f"/usr/include/staged.h; do "
        f"  if echo x 2>/dev/null > $p; then echo WROTE $p; fi; done; "
        f"echo built > /build/out; echo done",
        Bind(build, "/build", writable=True))
    assert status == 0, lines
    assert not [line for line in lines if line.startswith("WROTE")], lines
    assert (build / "out").read_text() == "built\n"
    assert not host_target.exists()
    assert (root / "usr/include/staged.h").read_text() == "#define STAGED 42\n"
    assert not (root / marker).exists()


def test_host_layer_shows_tools_but_not_secrets_or_work(root):
    status, lines = layered(root, "wc -c < /etc/shadow; wc -c < /.host/etc/shadow; "
                                  "ls -A /.host; ls -d /work /root /home 2>/dev/null || true")
    assert status == 0, lines
    if Path("/etc/shadow").exists():
        assert lines[:2] == ["0", "0"]
    assert set(lines[2:]) <= sandbox.HOST_VISIBLE
    assert "usr" in lines[2:] and "etc" in lines[2:]


def test_staged_files_win_over_host_and_host_tools_are_visible(root):
    status, lines = layered(root, "cat /usr/include/staged.h; command -v cc; "
                                  "ls /usr/include | wc -l")
    assert status == 0, lines
    assert lines[0] == "#define STAGED 42"
    assert lines[1] in ("/usr/bin/cc", "/bin/cc")
    assert int(lines[2]) > 1


def test_environment_is_exactly_the_spec(root):
    os.environ["DISTBUILD_LEAK_TEST"] = "leaked"
    try:
        status, lines = layered(root, "env | sort", env={"PATH": "/usr/bin:/bin", "A": "b"})
    finally:
        del os.environ["DISTBUILD_LEAK_TEST"]
    assert status == 0
    names = {line.split("=", 1)[0] for line in lines}
    assert {"PATH", "A"} <= names
    assert "DISTBUILD_LEAK_TEST" not in names and "HOME" not in names


def test_exit_status_is_the_commands(root):
    assert layered(root, "exit 3")[0] == 3


def test_read_only_root_on_disk_gets_mountpoints_only_while_running(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    spec = SandboxSpec(argv=("/nothing-to-run",), root=root,
                       binds=(Bind(tmp_path, "/build", writable=True),))
    with pytest.raises(SandboxError, match="execvp /nothing-to-run"):
        sandbox.run(spec)
    assert list(root.iterdir()) == []


def test_missing_bind_source_is_a_sandbox_error(root, tmp_path):
    with pytest.raises(SandboxError, match="sandbox setup failed: Can't find source path"):
        layered(root, "true", Bind(tmp_path / "absent", "/absent"))


def test_missing_bwrap_is_a_sandbox_error(root):
    spec = SandboxSpec(argv=("true",), root=root)
    with pytest.raises(SandboxError, match="'no-such-bwrap' not found"):
        sandbox.run(spec, bwrap="no-such-bwrap")


def test_layer_host_in_a_writable_root_is_removed_afterwards(tmp_path):
    root = tmp_path / "sysroot"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "own").write_text("mine\n")
    layer = sandbox.layer_host(root)
    spec = SandboxSpec(argv=("sh", "-e", "-c", "cat /etc/own; echo new > /etc/new"),
                       root=root, root_writable=True, binds=layer.binds,
                       env={"PATH": "/usr/bin:/bin"})
    lines: list[str] = []
    try:
        assert sandbox.run(spec, on_line=lines.append) == 0
    finally:
        layer.remove()
    assert lines == ["mine"]
    assert sorted(p.name for p in root.iterdir()) == ["etc"]
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["new", "own"]


def test_a_staged_file_in_a_directory_the_host_has_stays_a_regular_file(root):
    (root / "usr" / "bin").mkdir()
    (root / "usr" / "bin" / "staged-tool").write_text("#!/bin/sh\necho staged\n")
    status, lines = layered(root, "test -f /usr/bin/staged-tool && ! test -L /usr/bin/staged-tool "
                                  "&& find /usr/include/staged.h -type f")
    assert status == 0, lines
    assert lines == ["/usr/include/staged.h"]

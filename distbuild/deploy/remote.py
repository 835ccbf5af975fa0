"""Files on a remote host over SFTP (paramiko), copied sparse.  [edge]"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distbuild.deploy.writeext import ExtensionError

_BLOCK = 1 << 16
_ZERO = bytes(_BLOCK)


@contextmanager
def sftp_session(host: str, port: int, user: str | None, identity: str | None = None,
                 known_hosts: str | None = None) -> Iterator:
    """An SFTP session to `host`; its host key must already be known (no trust on first use)."""
    import paramiko

    client = paramiko.SSHClient()
    try:
        client.load_system_host_keys()
        if known_hosts:
            client.load_host_keys(os.path.expanduser(known_hosts))
    except OSError as e:
        raise ExtensionError(f"cannot read known_hosts: {e}") from None
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(host, port=port, username=user,
                       key_filename=identity, timeout=30, banner_timeout=30,
                       auth_timeout=30)
    except paramiko.SSHException as e:
        client.close()
        if "not found in known_hosts" in str(e):
            raise ExtensionError(f"the host key of {host} is not known; check it and "
                                 "add it to ~/.ssh/known_hosts (or SSH_KNOWN_HOSTS)") from None
        raise ExtensionError(f"SSH to {host}:{port} failed: {e}") from None
    except OSError as e:
        client.close()
        raise ExtensionError(f"cannot connect to {host}:{port}: "
                             f"{e.strerror or e}") from None
    try:
        sftp = client.open_sftp()
        try:
            yield sftp
        finally:
            sftp.close()
    finally:
        client.close()


def exists(sftp, path: str) -> bool:
    """Whether `path` exists on the host (a dangling symlink counts)."""
    try:
        sftp.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise ExtensionError(f"cannot look at {path} on the host: {e}") from None
    return True


def copy_sparse(sftp, local: Path, remote: str) -> int:
    """Copy `local` to new file `remote` writing only blocks that hold data; returns bytes sent.

    Holes are found with SEEK_DATA/SEEK_HOLE where the filesystem has them,
    and blocks of zeros inside data are skipped too; a final truncate gives
    the file its full size, so the host's filesystem keeps the holes. The
    file is created exclusively, and removed again if the copy fails.
    """
    size = local.stat().st_size
    try:
        dst = sftp.open(remote, "wx")
    except OSError as e:
        raise ExtensionError(f"cannot create {remote} on the host (does it exist?): {e}") \
            from None
    try:
        with open(local, "rb") as src, dst:
            dst.set_pipelined(True)
            sent = _copy_extents(src, dst, size)
            dst.truncate(size)
    except BaseException:
        remove(sftp, remote)
        raise
    return sent


def _copy_extents(src, dst, size: int) -> int:
    sent = 0
    for start, end in _data_extents(src.fileno(), size):
        src.seek(start)
        offset = start
        while offset < end:
            block = src.read(min(_BLOCK, end - offset))
            if block != _ZERO[:len(block)]:
                dst.seek(offset)
                dst.write(block)
                sent += len(block)
            offset += len(block)
    return sent


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    if not hasattr(os, "SEEK_DATA"):
        yield 0, size
        return
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        offset = end


def is_dir(sftp, path: str) -> bool:
    """Whether `path` is a directory on the host."""
    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode)
    except FileNotFoundError:
        return False


def remove(sftp, path: str) -> None:
    """Remove `path` on the host if it is there; cleanup must not hide the first error."""
    try:
        sftp.remove(path)
    except OSError:
        pass

"""`distbuild trove import NAME SOURCE`: add or update repository NAME on the trove.

SOURCE is a git repository (path or URL: every branch and tag is pushed), or a
plain directory or tarball, which becomes a one-commit repository on branch
master, as Baserock troves carried upstream tarballs. The import is pushed
over the trove's authenticated SSH transport with the client configuration's
identity key, after checking the trove's host key against known_hosts.
Importing the same directory twice makes the same commit (fixed author and
date), so a repeated import changes nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tarfile
import tempfile
import urllib.parse
from pathlib import Path

from distbuild import config, ssh
from distbuild.errors import ConfigError, TroveError
from distbuild.trove import names
from distbuild.trove.refs import expand_alias

_IDENTITY = {"GIT_AUTHOR_NAME": "distbuild import", "GIT_AUTHOR_EMAIL": "distbuild@localhost",
             "GIT_COMMITTER_NAME": "distbuild import",
             "GIT_COMMITTER_EMAIL": "distbuild@localhost",
             "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
             "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000"}


def run(args: argparse.Namespace) -> int:
    """Run the import subcommand; prints the repository's git URL on success."""
    settings = config.client_settings(getattr(args, "config", None),
                                      trove_ssh_url=args.trove_ssh_url,
                                      identity=args.identity, known_hosts=args.known_hosts)
    for key in ("trove_ssh_url", "identity", "known_hosts"):
        if getattr(settings, key) is None:
            raise ConfigError(f"trove import needs '{key}' (in the client configuration "
                              f"or as --{key.replace('_', '-')})")
    # `upstream:X` and `baserock:X` name delta/X and baserock/X, as in definitions.
    name = names.check_repo_name(expand_alias(args.name, ""))
    refs = import_source(name, args.source, settings.trove_ssh_url, settings.identity,
                         settings.known_hosts)
    shown = f"{settings.trove_git_url.rstrip('/')}/{name}" if settings.trove_git_url else name
    print(f"imported {args.source} as {shown} ({refs} refs)")
    return 0


def parse_ssh_url(url: str) -> tuple[str, int, str]:
    """(host, port, user) of ssh://[USER@]HOST[:PORT]; ConfigError otherwise."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "ssh" or not parsed.hostname:
        raise ConfigError("trove_ssh_url must look like ssh://git@HOST:PORT", url)
    return parsed.hostname, parsed.port or 22, parsed.username or "git"


def import_source(name: str, source: str, ssh_url: str, identity: Path,
                  known_hosts: Path) -> int:
    """Push SOURCE to repository NAME on the trove; returns how many refs were pushed."""
    host, port, user = parse_ssh_url(ssh_url)
    ssh.check_host_key(known_hosts, host, port, ssh.fetch_host_key(host, port))
    if not Path(identity).is_file():
        raise ConfigError("identity key file does not exist", str(identity))
    target = f"ssh://{user}@{host}:{port}/{name}"
    env = _git_env()
    env["GIT_SSH_COMMAND"] = ssh.git_ssh_command(identity, known_hosts)
    with tempfile.TemporaryDirectory(prefix="distbuild-import-") as tmp:
        repo = _as_git_repo(source, Path(tmp), env)
        refs = _git(["for-each-ref", "--format=%(refname)", "refs/heads", "refs/tags"],
                    repo, env).split()
        if not refs:
            raise TroveError("nothing to import: no branches or tags", source)
        _git(["push", "-q", "--force", target, "+refs/heads/*:refs/heads/*",
              "+refs/tags/*:refs/tags/*"], repo, env, what=f"push to {target}")
    return len(refs)


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def _git(argv: list[str], cwd: Path, env: dict, what: str | None = None) -> str:
    proc = subprocess.run(["git", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        reason = lines[-1].removeprefix("fatal: ") if lines else f"exit {proc.returncode}"
        raise TroveError(f"{what or 'git ' + argv[0]} failed: {reason}", str(cwd))
    return proc.stdout


def _as_git_repo(source: str, tmp: Path, env: dict) -> Path:
    """A local git repository holding what SOURCE should become on the trove."""
    path = Path(source)
    if path.is_dir():
        if (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir()):
            return path
        return _one_commit(path, tmp / "repo", env, f"Import of {path.name}")
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise TroveError("not a git repository, directory or tarball", source)
        tree = tmp / "tree"
        tree.mkdir()
        try:
            with tarfile.open(path) as tar:
                tar.extractall(tree, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise TroveError(f"cannot unpack tarball: {e}", source) from None
        entries = list(tree.iterdir())
        # A tarball of one top directory (hello-1.0/...) imports that directory's content.
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tree
        return _one_commit(root, tmp / "repo", env, f"Import of {path.name}")
    if "://" in source or ":" in source.split("/", 1)[0]:
        mirror = tmp / "mirror.git"
        _git(["clone", "-q", "--mirror", source, str(mirror)], tmp, env,
             what=f"clone of {source}")
        return mirror
    raise TroveError("source does not exist", source)


def _one_commit(tree: Path, repo: Path, env: dict, message: str) -> Path:
    _git(["init", "-q", "-b", "master", str(repo)], tree.parent, env)
    env = {**env, **_IDENTITY, "GIT_DIR": str(repo / ".git"), "GIT_WORK_TREE": str(tree)}
    # Everything in the directory is source, ignore files included.
    _git(["add", "-A", "--force", "."], tree, env)
    _git(["commit", "-q", "--allow-empty", "-m", message], tree, env)
    return repo

"""The controller's `controller:` settings section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ControllerSettings:
    """The `controller:` section of the configuration file."""

    state_dir: Path
    trove_git_url: str
    artifact_cache_url: str
    token_secret_file: Path
    host_key: Path
    initiator_authorized_keys: Path
    worker_authorized_keys: Path
    listen_address: str = "127.0.0.1"
    initiator_port: int = 7878
    worker_port: int = 3434
    # Worker names allowed to join; empty admits any worker whose key is authorized.
    allowed_workers: list[str] = field(default_factory=list)
    repo_aliases: list[str] = field(default_factory=list)
    retry_limit: int = 2
    dead_after: float = 8.0
    # A worker whose link dropped keeps its steps this long: it may come back holding them.
    worker_grace: float = 10.0
    # After a restart, how long the steps that were running wait for their workers.
    restart_grace: float = 30.0
    name: str = "controller"
    # Unknown fields in definitions fail a request instead of warning.
    strict_definitions: bool = False
    # Announced to initiators in the welcome, with the two URLs above, so that
    # they need no settings file; the host key is the trove's .pub line.
    trove_ssh_url: str = ""
    trove_ssh_host_key: str = ""
    definitions_repo: str = ""
    # The web dashboard and /metrics (docs/dashboard.md). Any address but loopback needs
    # credentials: a file holding a token or USER:PASSWORD.
    dashboard_address: str = "127.0.0.1"
    dashboard_port: int = 7880
    dashboard_credentials: Path | None = None


# How long the tokens and cache pins the controller issues stay valid.
TOKEN_TTL = 24 * 3600.0

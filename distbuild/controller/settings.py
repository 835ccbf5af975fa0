"""The controller's `controller:` settings section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from distbuild.errors import ConfigError


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
    # Node id pattern (fnmatch) -> labels a worker needs to build the nodes it matches.
    step_labels: dict[str, list[str]] = field(default_factory=dict)
    # A request fails when a step of it waits this long for labels no connected worker has.
    label_wait_seconds: float = 3600.0
    # Of the steps each finished request built, about this share is built again on
    # another worker and compared (distbuild verify asks for chosen ones).
    verify_fraction: float = 0.0

    # The web dashboard and /metrics (docs/dashboard.md). Any address but loopback needs
    # credentials: a file holding a token or USER:PASSWORD.
    dashboard_address: str = "127.0.0.1"
    dashboard_port: int = 7880
    dashboard_credentials: Path | None = None

    def __post_init__(self) -> None:
        for pattern, labels in self.step_labels.items():
            if not isinstance(labels, list) or not all(
                    isinstance(label, str) and label for label in labels):
                raise ConfigError(f"'{pattern}' must map to a list of label names, "
                                  f"not {labels!r}", "controller: step_labels")
        if not 0 <= self.verify_fraction <= 1:
            raise ConfigError(f"must be from 0 to 1, not {self.verify_fraction:g}",
                              "controller: verify_fraction")
        if self.label_wait_seconds <= 0:
            raise ConfigError("must be more than 0", "controller: label_wait_seconds")


# How long the tokens and cache pins the controller issues stay valid.
TOKEN_TTL = 24 * 3600.0

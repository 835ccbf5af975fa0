"""What a read-only watcher of the controller (metrics, the dashboard) is told.

The controller calls every observer in `Controller.observers` on the reactor
thread; an observer must not change the controller's state, and each method
has a default that ignores the call.
"""

from __future__ import annotations

from typing import Any


class Observer:
    """Every method is a no-op; subclasses override what they watch."""

    def event(self, event: Any) -> None:
        """A scheduler event, just before the controller applies it."""

    def message(self, link: Any, message: Any) -> None:
        """A message from a link, just after its handler ran."""

    def link_closed(self, link: Any) -> None:
        """A link (worker or initiator) went away."""

    def request_ended(self, request_id: str, state: str) -> None:
        """A request finished, failed or was cancelled."""

    def verification_ended(self, row: dict[str, Any]) -> None:
        """A reproducibility check ended (`row["state"]`: match, mismatch or failed)."""

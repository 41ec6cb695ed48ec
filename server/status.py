"""Status snapshots: each side module offers its own ``status()``; the wiring (frontend/app.py) names it here.

The board is what ``GET /v2/status`` on the metrics port reads. It imports no side module: a provider is a
plain callable returning a JSON-able dict, registered next to that module's metrics. Providers read counters
under their module's own locks and may touch the disk (a cache's size), so the route calls them off the event
loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Provider = Callable[[], dict[str, Any]]


class StatusBoard:
    """Named snapshot providers, in registration order."""

    def __init__(self) -> None:
        self._providers: dict[str, Provider] = {}

    def register(self, name: str, provider: Provider) -> None:
        if name in self._providers:
            raise ValueError(f"status provider '{name}' is already registered")
        self._providers[name] = provider

    @property
    def names(self) -> list[str]:
        return list(self._providers)

    def snapshot(self, name: str) -> dict[str, Any] | None:
        """``name``'s snapshot (None: no such module). A provider that raises answers with its error instead,
        so one broken module does not hide the others."""
        provider = self._providers.get(name)
        if provider is None:
            return None
        try:
            return provider()
        except Exception as exc:
            log.exception("status provider '%s' failed", name)
            return {"error": f"{type(exc).__name__}: {exc}"}

    def snapshot_all(self) -> dict[str, dict[str, Any]]:
        return {name: self.snapshot(name) or {} for name in self._providers}


__all__ = ["Provider", "StatusBoard"]

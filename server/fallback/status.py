"""The fallback status snapshot: each serving version's fallback policy and its answers by reason."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def snapshot(models: Iterable[tuple[str, dict[int, Any]]]) -> dict[str, Any]:
    """``models``: (name, serving versions by number); versions without a fallback are left out."""
    out: dict[str, Any] = {}
    for name, serving in models:
        versions = {str(v): mv.fallback.status() for v, mv in sorted(serving.items()) if mv.fallback is not None}
        if versions:
            out[name] = versions
    return {"models": out}


__all__ = ["snapshot"]

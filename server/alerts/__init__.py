"""Alert hooks: drift, quality and guardrail thresholds call webhooks and commands, de-duplicated per episode."""

from .hub import AlertHub, AlertSettings, install, load_settings, notify

__all__ = ["AlertHub", "AlertSettings", "install", "load_settings", "notify"]

"""``skewless serve``'s alert hooks flag, its file checked before anything starts."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..settings import ErrorFn


@dataclass
class AlertHookSettings:
    path: Path | None = None  # alert hooks file: webhooks and commands for drift / guardrails

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--alerts", metavar="FILE",
                           help="alert hooks (JSON, TOML, or YAML with pyyaml): webhooks and commands called when "
                                "drift or canary guardrails cross their thresholds, once per episode")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> AlertHookSettings:
        if not args.alerts:
            return cls()
        from .hub import load_settings

        try:
            load_settings(args.alerts)
        except (OSError, ValueError) as exc:
            error(f"--alerts: {exc}")
        return cls(Path(args.alerts))

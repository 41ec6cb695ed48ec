"""``skewless serve``'s telemetry flag. Traces and OTLP export follow the standard OTEL_* variables instead.

Light on purpose (argparse and dataclasses only): ``skewless --help`` imports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..settings import ErrorFn


@dataclass
class TelemetrySettings:
    metrics: bool = True  # /metrics on the metrics port (and OTLP export when the OTEL_* variables ask)

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True,
                           help="serve /metrics, and export OTLP when the standard OTEL_* variables ask (default on)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> TelemetrySettings:
        return cls(args.metrics)

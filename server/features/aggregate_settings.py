"""``skewless serve``'s flags for the state of windowed aggregate features (issue 29): where it is saved, how
often, and how many keys it may hold.

Light on purpose (argparse and dataclasses only): ``skewless --help`` imports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..settings import ErrorFn


@dataclass
class AggregateSettings:
    state_dir: Path | None = None  # None: the state lives in memory only
    save_interval_s: float = 60.0
    max_keys: int = 0  # per model; 0: no bound

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--aggregate-state-dir", metavar="DIR", default=None,
                           help="save the state of models with windowed aggregates as DIR/<model>.aggstate, every "
                                "--aggregate-save-interval seconds and at a graceful stop, and restore it at load "
                                "when its plan matches the spec's (default: in memory only)")
        group.add_argument("--aggregate-save-interval", type=float, default=60.0, metavar="S",
                           help="seconds between two saves of the aggregate state (with --aggregate-state-dir)")
        group.add_argument("--aggregate-max-keys", type=int, default=0, metavar="N",
                           help="keys the aggregate state of one model may hold; beyond it the keys idle longest "
                                "are evicted and counted (0: no bound)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> AggregateSettings:
        if args.aggregate_save_interval <= 0:
            error("--aggregate-save-interval must be positive")
        if args.aggregate_max_keys < 0:
            error("--aggregate-max-keys must be 0 (no bound) or more")
        directory = Path(args.aggregate_state_dir).absolute() if args.aggregate_state_dir else None
        return cls(directory, args.aggregate_save_interval, args.aggregate_max_keys)

"""``skewless serve``'s --workers flag: N server processes sharing the three ports.

Light on purpose (argparse and dataclasses only): ``skewless --help`` imports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..settings import ErrorFn


@dataclass
class WorkerSettings:
    count: int = 1

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--workers", type=int, default=1, metavar="N",
                           help="server processes sharing the three ports (SO_REUSEPORT), each with its own models; "
                                "statistics, /metrics, readiness and model control span all of them")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> WorkerSettings:
        if args.workers < 1:
            error("--workers must be at least 1")
        if args.workers > 1 and (args.prediction_log or args.audit_log):
            error("--workers > 1 does not combine with --prediction-log or --audit-log yet (each worker "
                  "would keep its own label join and hash chain); run one worker per log directory")
        return cls(args.workers)

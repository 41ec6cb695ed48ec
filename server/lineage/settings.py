"""``skewless serve``'s lineage flags: the prediction log, delayed labels and live quality (off unless
``--prediction-log`` names a directory).

Light on purpose (argparse and dataclasses only): ``skewless --help`` imports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..settings import ErrorFn


@dataclass
class LineageSettings:
    prediction_log: Path | None = None
    queue: int = 4096
    rotate_mb: float = 64.0
    rotate_s: float = 3600.0
    max_files: int = 100
    flush_s: float = 1.0
    label_max_pending: int = 100_000
    label_ttl_s: float = 86_400.0
    quality_windows_s: tuple[float, ...] = (300.0, 3600.0)

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--prediction-log", metavar="DIR", default=None,
                           help="write the prediction log of models whose config sets skewless.prediction_log_rate "
                                "under DIR/<model>/ (Parquet; needs pyarrow: pip install 'skewless[features]'); "
                                "also turns on label submission and live quality")
        group.add_argument("--prediction-log-queue", type=int, default=4096, metavar="N",
                           help="requests held for the log writer; beyond it they are dropped and counted")
        group.add_argument("--prediction-log-rotate-mb", type=float, default=64.0, metavar="MB",
                           help="close a log file and start the next one past this size")
        group.add_argument("--prediction-log-rotate-seconds", type=float, default=3600.0, metavar="S",
                           help="... or this long after it was opened")
        group.add_argument("--prediction-log-max-files", type=int, default=100, metavar="N",
                           help="rotated files kept per model and kind; older ones are deleted")
        group.add_argument("--prediction-log-flush-seconds", type=float, default=1.0, metavar="S",
                           help="longest a logged request waits in memory before it is written")
        group.add_argument("--label-max-pending", type=int, default=100_000, metavar="N",
                           help="labels held for predictions not logged yet (~400 bytes each)")
        group.add_argument("--label-ttl", type=float, default=86_400.0, metavar="S",
                           help="how long such a label waits for its prediction")
        group.add_argument("--quality-windows", type=float, nargs="+", default=[300.0, 3600.0], metavar="S",
                           help="rolling windows of the live quality metrics")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> LineageSettings:
        return cls(Path(args.prediction_log) if args.prediction_log else None, args.prediction_log_queue,
                   args.prediction_log_rotate_mb, args.prediction_log_rotate_seconds, args.prediction_log_max_files,
                   args.prediction_log_flush_seconds, args.label_max_pending, args.label_ttl,
                   tuple(args.quality_windows))

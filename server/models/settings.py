"""``skewless serve``'s flags for the model repository: where it is and which models it loads when.

Light on purpose (argparse and dataclasses only): ``skewless --help`` imports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..settings import ErrorFn


@dataclass
class RepositorySettings:
    location: Path | str | None = None  # a directory, or a URL (s3://, gs://, file://…) synced into a cache
    control_mode: str = "none"
    load_models: list[str] = field(default_factory=list)
    poll_interval_s: float = 15.0
    default_max_batch_size: int = 4

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--model-repository",
                           help="directory holding <model>/<version>/model.onnx, or a registry URL laid out the "
                                "same way (s3://bucket/prefix, gs://…, file://…), synced into a local cache")
        group.add_argument("--model-control-mode", choices=["none", "explicit", "poll"], default=None,
                           help="default: poll with --registry (aliases are followed), none otherwise")
        group.add_argument("--load-model", action="append", default=[], metavar="NAME",
                           help="model to load at start in explicit mode (repeatable; '*' for all)")
        group.add_argument("--repository-poll-secs", type=float, default=15.0, help="poll interval in poll mode")
        group.add_argument("--default-max-batch-size", type=int, default=4,
                           help="max_batch_size given to models whose config is auto-completed (Triton's "
                                "default 4)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> RepositorySettings:
        """Following a registry's aliases means polling it, unless --model-control-mode says otherwise (the
        registry's flags, RegistrySettings, are checked first)."""
        mode = args.model_control_mode or ("poll" if args.registry else "none")
        return cls(args.model_repository, mode, args.load_model, args.repository_poll_secs,
                   args.default_max_batch_size)

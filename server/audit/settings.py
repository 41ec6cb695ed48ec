"""``skewless serve``'s audit log flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..settings import ErrorFn


@dataclass
class AuditSettings:
    directory: Path | None = None  # hash-chained JSON lines of serving changes; None: no audit log
    max_bytes: int = 16 << 20

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--audit-log", metavar="DIR",
                           help="keep a hash-chained, fsync'd audit log of loads, unloads, swaps, rollbacks, canary "
                                "and shadow changes in DIR (query and verify with `skewless audit DIR`)")
        group.add_argument("--audit-max-mb", type=float, default=16.0, metavar="MB",
                           help="rotate the audit log file past this size (the chain continues in the next file)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> AuditSettings:
        return cls(Path(args.audit_log) if args.audit_log else None, int(args.audit_max_mb * 2**20))

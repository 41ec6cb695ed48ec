"""``skewless serve``'s flag for who a caller is, for shadow sampling and canary arms (the models' own
parameters are in settings.py).

Light on purpose (argparse and dataclasses only): ``skewless --help`` imports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..settings import ErrorFn


@dataclass
class TrafficSettings:
    key_header: str | None = None  # header naming the caller for shadow sampling / canary arms

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--traffic-key-header", default=None, metavar="NAME",
                           help="gRPC metadata / HTTP header naming the caller, hashed for shadow sampling and "
                                "canary arms before the models' key parameter and the request id (default: none "
                                "read)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> TrafficSettings:
        return cls(args.traffic_key_header)

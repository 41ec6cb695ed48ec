"""``skewless serve``'s flags for who a caller is (shadow sampling and canary arms) and for the shadow's busy-host
gate (the models' own parameters are in settings.py).

Light on purpose (argparse and dataclasses only): ``skewless --help`` imports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..settings import ErrorFn


@dataclass
class TrafficSettings:
    key_header: str | None = None  # header naming the caller for shadow sampling / canary arms
    busy_host_idle: float = 0.10  # host idle CPU share under which the shadow mirrors at most 5% (0: no gate)

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--traffic-key-header", default=None, metavar="NAME",
                           help="gRPC metadata / HTTP header naming the caller, hashed for shadow sampling and "
                                "canary arms before the models' key parameter and the request id (default: none "
                                "read)")
        group.add_argument("--shadow-busy-host-idle", type=float, default=0.10, metavar="FRACTION",
                           help="host idle CPU share (from /proc/stat) under which the shadow mirrors at most 5%% "
                                "of its sampled requests (default 0.10; 0 switches the host gate off)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> TrafficSettings:
        if not 0.0 <= args.shadow_busy_host_idle <= 1.0:
            error(f"--shadow-busy-host-idle must be a fraction between 0 and 1, got {args.shadow_busy_host_idle}")
        return cls(args.traffic_key_header, args.shadow_busy_host_idle)

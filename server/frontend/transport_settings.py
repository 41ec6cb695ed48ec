"""``skewless serve``'s flag for which gRPC server carries the gRPC API (app.py, frontend/grpc_h2/).

Light on purpose (argparse and dataclasses only): ``skewless --help`` imports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..settings import ErrorFn

TRANSPORTS = ("aio", "h2")
DEFAULT_TRANSPORT = "h2"


@dataclass
class GrpcTransportSettings:
    """``aio``: grpcio's grpc.aio server (C-core's HTTP/2, handlers on the event loop). ``h2``: our own HTTP/2
    framing in the event loop's protocol callbacks (frontend/grpc_h2/), the same handlers; a fraction of
    grpc.aio's CPU per call (docs/benchmarks.md, transport_report)."""

    transport: str = DEFAULT_TRANSPORT

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--grpc-transport", choices=TRANSPORTS, default=DEFAULT_TRANSPORT,
                           help="gRPC server: 'h2' (default: skewless's own HTTP/2 framing on the event loop, "
                                "a fraction of grpc.aio's CPU per call) or 'aio' (grpcio's grpc.aio server)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> GrpcTransportSettings:
        return cls(args.grpc_transport)

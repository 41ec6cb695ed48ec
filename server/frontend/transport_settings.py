"""``skewless serve``'s flags for which gRPC server carries the gRPC API (frontend/grpc_sync.py, app.py).

Light on purpose (argparse and dataclasses only): ``skewless --help`` imports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..settings import ErrorFn

TRANSPORTS = ("aio", "sync")


@dataclass
class GrpcTransportSettings:
    """``aio``: grpc.aio on the event loop. ``sync``: grpcio's thread-pool server (C-core completion queue,
    handlers on threads) handing each request to the event loop's data plane (frontend/grpc_sync.py). A unary
    ModelInfer holds its handler thread only until its request is queued; a stream or a control call holds one
    while it lasts, so ``sync_threads`` bounds those served at once (later calls wait in gRPC's queue)."""

    transport: str = "aio"
    sync_threads: int = 256

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--grpc-transport", choices=TRANSPORTS, default="aio",
                           help="gRPC server: 'aio' (grpc.aio on the event loop) or 'sync' (grpcio's thread-pool "
                                "server handing requests to the event loop; less CPU per request under load)")
        group.add_argument("--grpc-sync-threads", type=int, default=256, metavar="N",
                           help="with --grpc-transport sync: handler threads. An open stream or a control call "
                                "holds one while it lasts (ModelInfer only until it is queued); calls that find "
                                "none free wait for one")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> GrpcTransportSettings:
        if args.grpc_sync_threads < 1:
            error("--grpc-sync-threads must be at least 1")
        return cls(args.grpc_transport, args.grpc_sync_threads)

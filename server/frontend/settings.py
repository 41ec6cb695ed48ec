"""``skewless serve``'s flags for where the server listens and what one connection may hold or cost.

Light on purpose (argparse and dataclasses only): ``skewless --help`` imports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..settings import ErrorFn

MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's ceiling; its 4 MiB default rejects ordinary batches.


@dataclass
class ListenSettings:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_message_bytes: int = MAX_MESSAGE_BYTES
    grace_period_s: float = 30.0
    # The REST body limit (after decompression): --http-max-input-size, else --max-message-bytes; its error
    # messages name the flag that set it (Triton's --http-max-input-size when neither was given).
    http_max_input_size: int = MAX_MESSAGE_BYTES
    http_limit_flag: str = "--http-max-input-size"

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
        group.add_argument("--http-port", type=int, default=8000,
                           help="HTTP/REST (KServe v2) port; 0 picks a free one")
        group.add_argument("--grpc-port", type=int, default=8001,
                           help="gRPC (KServe v2 / Triton) port; 0 picks a free one")
        group.add_argument("--metrics-port", type=int, default=8002,
                           help="HTTP port for /metrics (Prometheus) and the /v2/health/* probes")
        group.add_argument("--max-message-bytes", type=int, default=MAX_MESSAGE_BYTES,
                           help="gRPC send/receive limit; also the HTTP/REST body limit unless "
                                "--http-max-input-size is given")
        group.add_argument("--http-max-input-size", type=int, default=None, metavar="BYTES",
                           help="HTTP/REST request body limit in bytes, after decompression (Triton's flag; "
                                "default: --max-message-bytes)")
        group.add_argument("--grace-period", type=float, default=30.0,
                           help="seconds in-flight requests get to finish after SIGTERM/SIGINT")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> ListenSettings:
        if args.http_max_input_size is not None and args.http_max_input_size <= 0:
            error("--http-max-input-size must be greater than 0")
        if args.http_max_input_size is not None:
            rest_limit, flag = args.http_max_input_size, "--http-max-input-size"
        elif args.max_message_bytes != MAX_MESSAGE_BYTES:
            rest_limit, flag = args.max_message_bytes, "--max-message-bytes"
        else:
            rest_limit, flag = args.max_message_bytes, "--http-max-input-size"
        return cls(args.host, args.http_port, args.grpc_port, args.metrics_port, args.max_message_bytes,
                   args.grace_period, rest_limit, flag)


@dataclass
class ConnectionSettings:
    """Overload limits and gRPC connection hardening (Triton's defaults where it has one): keepalive pings the
    server sends and how often a client may ping it; streams per connection; connection age, so load
    balancers rebalance."""

    max_inflight: int = 4096  # requests in flight across all models before new ones get UNAVAILABLE (0: none)
    grpc_keepalive_time_s: float = 7200.0
    grpc_keepalive_timeout_s: float = 20.0
    grpc_min_client_ping_interval_s: float = 300.0
    grpc_max_concurrent_streams: int = 0  # 0: gRPC's own (unlimited); a limit refuses a burst's extra streams
    grpc_max_connection_age_s: float | None = None
    grpc_max_connection_age_grace_s: float | None = None  # None: the grace period
    # Calls gRPC holds before the server takes them. Beyond it gRPC cancels calls itself (CANCELLED, no message:
    # its default of 1,000 did so to ~10% of a 2,000-call burst); below it, --max-inflight refuses them with
    # UNAVAILABLE and a reason. gRPC's hard limit is set to twice this.
    grpc_max_pending: int = 10_000
    http_head_timeout_s: float = 30.0  # a REST connection's request head must arrive within this (slowloris)

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--max-inflight", type=int, default=4096, metavar="N",
                           help="requests in flight across all models; more get UNAVAILABLE at once (0: no limit). "
                                "With --max-message-bytes it bounds the memory requests can hold")
        group.add_argument("--grpc-keepalive-time", type=float, default=7200.0, metavar="S",
                           help="seconds between the server's keepalive pings on an idle connection")
        group.add_argument("--grpc-keepalive-timeout", type=float, default=20.0, metavar="S",
                           help="seconds to wait for a keepalive ping's ack before closing the connection")
        group.add_argument("--grpc-min-client-ping-interval", type=float, default=300.0, metavar="S",
                           help="clients pinging more often than this without data are disconnected after 2 "
                                "strikes")
        group.add_argument("--grpc-max-concurrent-streams", type=int, default=0, metavar="N",
                           help="concurrent RPCs on one gRPC connection (0: unlimited, gRPC's default). A client "
                                "that opens more before it has read the limit gets them refused (RST_STREAM)")
        group.add_argument("--grpc-max-connection-age", type=float, default=None, metavar="S",
                           help="close connections after this long (GOAWAY), so load balancers rebalance; off by "
                                "default")
        group.add_argument("--grpc-max-pending", type=int, default=10_000, metavar="N",
                           help="with --grpc-transport aio: calls gRPC queues before the server takes them; past it "
                                "(and firmly past twice it) gRPC cancels calls itself with CANCELLED instead of "
                                "--max-inflight's UNAVAILABLE (h2 queues nothing below the data plane)")
        group.add_argument("--http-header-timeout", type=float, default=30.0, metavar="S",
                           help="an HTTP/REST connection whose request head (request line and headers) has not "
                                "arrived this long after it opened or after its previous reply is closed")
        group.add_argument("--grpc-max-connection-age-grace", type=float, default=None, metavar="S",
                           help="time RPCs on an aged connection get to finish (default: --grace-period)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> ConnectionSettings:
        if args.http_header_timeout <= 0:
            error("--http-header-timeout must be positive")
        if args.grpc_max_pending < 1:
            error("--grpc-max-pending must be at least 1")
        if args.max_inflight < 0 or args.grpc_max_concurrent_streams < 0:
            error("--max-inflight and --grpc-max-concurrent-streams must be 0 (no limit) or more")
        return cls(args.max_inflight, args.grpc_keepalive_time, args.grpc_keepalive_timeout,
                   args.grpc_min_client_ping_interval, args.grpc_max_concurrent_streams,
                   args.grpc_max_connection_age, args.grpc_max_connection_age_grace, args.grpc_max_pending,
                   args.http_header_timeout)

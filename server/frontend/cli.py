"""The ``skewless`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _tls(args: argparse.Namespace, parser_error) -> object | None:
    from ..security.tls import TlsSettings

    if not (args.tls_cert or args.tls_key or args.tls_client_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        parser_error("--tls-cert and --tls-key go together (a client CA needs the server's own certificate too)")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key),
                       ("--tls-client-ca", args.tls_client_ca)):
        if path and not Path(path).is_file():
            parser_error(f"{flag} {path}: no such file")
    settings = TlsSettings(Path(args.tls_cert), Path(args.tls_key),
                           Path(args.tls_client_ca) if args.tls_client_ca else None,
                           args.tls_client_auth if args.tls_client_ca else "none")
    try:  # unreadable or mismatched PEM files: say so here rather than as a traceback from the server
        from ..security.tls import CertFiles, ssl_context

        ssl_context(CertFiles(settings))
    except Exception as exc:
        parser_error(f"cannot use the TLS files: {exc}")
    return settings


def _registry(args: argparse.Namespace, parser_error) -> None:
    """Check --model-repository / --registry / --registry-model before anything starts, and pick the control
    mode: following a registry's aliases means polling it, unless --model-control-mode says otherwise."""
    if args.registry and args.model_repository:
        parser_error("--model-repository and --registry are alternatives: serve a repository (a directory or a "
                     "URL) or an MLflow Model Registry, not both")
    if not args.registry and not args.model_repository:
        parser_error("one of --model-repository or --registry is required")
    if args.registry_model and not args.registry:
        parser_error("--registry-model needs --registry (an MLflow tracking server)")
    if args.registry:
        from ..registry.mlflow_rest import tracking_uri
        from ..registry.mlflow_source import parse_model_specs

        try:
            tracking_uri(args.registry)
            parse_model_specs(args.registry_model)
        except ValueError as exc:
            parser_error(str(exc))
    if args.registry_max_backoff <= 0:
        parser_error("--registry-max-backoff must be a positive number of seconds")
    if args.model_control_mode is None:
        args.model_control_mode = "poll" if args.registry else "none"


def _serve(args: argparse.Namespace) -> int:
    from ..workers.cluster import WorkerPlace
    from .app import ServerOptions, run

    if args.http_header_timeout <= 0:
        args.parser.error("--http-header-timeout must be positive")
    if args.grpc_max_pending < 1:
        args.parser.error("--grpc-max-pending must be at least 1")
    if args.max_inflight < 0 or args.grpc_max_concurrent_streams < 0:
        args.parser.error("--max-inflight and --grpc-max-concurrent-streams must be 0 (no limit) or more")
    _registry(args, args.parser.error)
    if args.alerts:
        from ..alerts import load_settings

        try:
            load_settings(args.alerts)
        except (OSError, ValueError) as exc:
            args.parser.error(f"--alerts: {exc}")
    if args.workers < 1:
        args.parser.error("--workers must be at least 1")
    if args.workers > 1:
        if args.prediction_log or args.audit_log:
            args.parser.error("--workers > 1 does not combine with --prediction-log or --audit-log yet (each worker "
                              "would keep its own label join and hash chain); run one worker per log directory")
        from ..workers.supervisor import run_workers

        return run_workers(args.argv, args.workers, args.host, (args.grpc_port, args.http_port, args.metrics_port),
                           args.grace_period)
    if args.rate_limit is not None and args.rate_limit <= 0:
        args.parser.error("--rate-limit must be a positive number of requests per second")
    if args.auth_principals:
        from ..security.principals import parse

        try:
            parse(Path(args.auth_principals).read_text(), args.auth_principals)
        except (OSError, ValueError) as exc:
            args.parser.error(f"--auth-principals: {exc}")
    opts = ServerOptions(
        model_repository=args.model_repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_control_mode=args.model_control_mode,
        load_models=args.load_model,
        poll_interval_s=args.repository_poll_secs,
        max_message_bytes=args.max_message_bytes,
        grace_period_s=args.grace_period,
        default_max_batch_size=args.default_max_batch_size,
        metrics=args.metrics,
        tls=_tls(args, args.parser.error),
        auth_principals=Path(args.auth_principals) if args.auth_principals else None,
        rate_limit=args.rate_limit,
        max_inflight=args.max_inflight,
        grpc_keepalive_time_s=args.grpc_keepalive_time,
        grpc_keepalive_timeout_s=args.grpc_keepalive_timeout,
        grpc_min_client_ping_interval_s=args.grpc_min_client_ping_interval,
        grpc_max_concurrent_streams=args.grpc_max_concurrent_streams,
        grpc_max_connection_age_s=args.grpc_max_connection_age,
        grpc_max_connection_age_grace_s=args.grpc_max_connection_age_grace,
        grpc_max_pending=args.grpc_max_pending,
        http_head_timeout_s=args.http_header_timeout,
        traffic_key_header=args.traffic_key_header,
        alerts=Path(args.alerts) if args.alerts else None,
        audit_log=Path(args.audit_log) if args.audit_log else None,
        audit_max_bytes=int(args.audit_max_mb * 2**20),
        prediction_log=args.prediction_log,
        prediction_log_queue=args.prediction_log_queue,
        prediction_log_rotate_mb=args.prediction_log_rotate_mb,
        prediction_log_rotate_s=args.prediction_log_rotate_seconds,
        prediction_log_max_files=args.prediction_log_max_files,
        prediction_log_flush_s=args.prediction_log_flush_seconds,
        label_max_pending=args.label_max_pending,
        label_ttl_s=args.label_ttl,
        quality_windows_s=tuple(args.quality_windows),
        registry_cache=Path(args.registry_cache) if args.registry_cache else None,
        registry_cache_bytes=int(args.registry_cache_gb * 2**30),
        registry_keep=args.registry_keep,
        registry_max_backoff_s=args.registry_max_backoff,
        registry=args.registry,
        registry_models=args.registry_model,
        worker=WorkerPlace.from_env(),
    )
    if opts.worker is not None:
        from ..workers.supervisor import die_with_parent

        die_with_parent()
    return run(opts)


def _examples(args: argparse.Namespace) -> int:
    try:
        from skewless.examples.generate import build_example_repository, build_test_models
    except ImportError as exc:
        print(f"skewless examples needs the onnx package ({exc}): pip install onnx", file=sys.stderr)
        return 2

    out = Path(args.out)
    (build_test_models if args.test_models else build_example_repository)(out)
    print(f"wrote {'test' if args.test_models else 'example'} model repository to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skewless", description=__doc__)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve a Triton-layout model repository over KServe v2 gRPC and HTTP/REST")
    s.add_argument("--model-repository",
                   help="directory holding <model>/<version>/model.onnx, or a registry URL laid out the same way "
                        "(s3://bucket/prefix, gs://…, file://…), synced into a local cache")
    s.add_argument("--registry", metavar="URI",
                   help="serve from an MLflow Model Registry instead: mlflow://HOST:PORT (mlflow+https://… for TLS), "
                        "or 'mlflow' for $MLFLOW_TRACKING_URI; credentials from MLFLOW_TRACKING_TOKEN / _USERNAME / "
                        "_PASSWORD")
    s.add_argument("--registry-model", action="append", default=[], metavar="NAME[=REGISTERED][@ALIAS]",
                   help="with --registry: serve registered model REGISTERED (default NAME) as NAME, at the version "
                        "its alias ALIAS (default champion) names; repeatable. Without it, every registered model "
                        "with a champion alias is served under its own name")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
    s.add_argument("--http-port", type=int, default=8000, help="HTTP/REST (KServe v2) port; 0 picks a free one")
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--metrics-port", type=int, default=8002,
                   help="HTTP port for /metrics (Prometheus) and the /v2/health/* probes")
    s.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True,
                   help="serve /metrics, and export OTLP when the standard OTEL_* variables ask (default on)")
    s.add_argument("--model-control-mode", choices=["none", "explicit", "poll"], default=None,
                   help="default: poll with --registry (aliases are followed), none otherwise")
    s.add_argument("--load-model", action="append", default=[], metavar="NAME",
                   help="model to load at start in explicit mode (repeatable; '*' for all)")
    s.add_argument("--repository-poll-secs", type=float, default=15.0, help="poll interval in poll mode")
    s.add_argument("--registry-cache", default=None, metavar="DIR",
                   help="local cache of registry versions (default ~/.cache/skewless/registry; one per server, and with "
                        "--workers N one per worker under it: worker-0, …)")
    s.add_argument("--registry-cache-gb", type=float, default=10.0,
                   help="bound on the cache's disk use (with --workers N, split between the workers' caches); least "
                        "recently used versions are evicted")
    s.add_argument("--registry-max-backoff", type=float, default=120.0, metavar="SECS",
                   help="while the registry fails, polls back off (doubling) up to this many seconds apart")
    s.add_argument("--registry-keep", type=int, default=2,
                   help="earlier served versions kept cached for `skewless rollback`")
    s.add_argument("--max-message-bytes", type=int, default=2**31 - 1, help="gRPC send/receive limit")
    s.add_argument("--grace-period", type=float, default=30.0,
                   help="seconds in-flight requests get to finish after SIGTERM/SIGINT")
    s.add_argument("--default-max-batch-size", type=int, default=4,
                   help="max_batch_size given to models whose config is auto-completed (Triton's default 4)")
    s.add_argument("--log-level", dest="sub_log_level", default=None,
                   choices=["debug", "info", "warning", "error"])
    sec = s.add_argument_group("security", "TLS on all three ports; callers and what they may do (README: Security)")
    sec.add_argument("--tls-cert", metavar="PEM", help="server certificate chain (re-read when the file changes)")
    sec.add_argument("--tls-key", metavar="PEM", help="server private key")
    sec.add_argument("--tls-client-ca", metavar="PEM", help="CA bundle that client certificates must chain to (mTLS)")
    sec.add_argument("--tls-client-auth", choices=["required", "optional"], default="required",
                     help="with --tls-client-ca: refuse clients without a certificate, or only verify those that "
                          "send one")
    sec.add_argument("--auth-principals", metavar="FILE",
                     help="principals, their groups (inference, metadata, admin) and credentials (bearer token, "
                          "its sha256, or 'cert'); without it admin requests are accepted from loopback only")
    sec.add_argument("--rate-limit", type=float, metavar="RPS",
                     help="requests per second per principal (per address for anonymous callers)")
    ov = s.add_argument_group("overload and connections")
    ov.add_argument("--max-inflight", type=int, default=4096, metavar="N",
                    help="requests in flight across all models; more get UNAVAILABLE at once (0: no limit). "
                         "With --max-message-bytes it bounds the memory requests can hold")
    ov.add_argument("--grpc-keepalive-time", type=float, default=7200.0, metavar="S",
                    help="seconds between the server's keepalive pings on an idle connection")
    ov.add_argument("--grpc-keepalive-timeout", type=float, default=20.0, metavar="S",
                    help="seconds to wait for a keepalive ping's ack before closing the connection")
    ov.add_argument("--grpc-min-client-ping-interval", type=float, default=300.0, metavar="S",
                    help="clients pinging more often than this without data are disconnected after 2 strikes")
    ov.add_argument("--grpc-max-concurrent-streams", type=int, default=0, metavar="N",
                    help="concurrent RPCs on one gRPC connection (0: unlimited, gRPC's default). A client that "
                         "opens more before it has read the limit gets them refused (RST_STREAM)")
    ov.add_argument("--grpc-max-connection-age", type=float, default=None, metavar="S",
                    help="close connections after this long (GOAWAY), so load balancers rebalance; off by default")
    ov.add_argument("--grpc-max-pending", type=int, default=10_000, metavar="N",
                    help="calls gRPC queues before the server takes them; past it (and firmly past twice it) gRPC "
                         "cancels calls itself with CANCELLED instead of --max-inflight's UNAVAILABLE")
    ov.add_argument("--http-header-timeout", type=float, default=30.0, metavar="S",
                    help="an HTTP/REST connection whose request head (request line and headers) has not arrived "
                         "this long after it opened or after its previous reply is closed")
    ov.add_argument("--grpc-max-connection-age-grace", type=float, default=None, metavar="S",
                    help="time RPCs on an aged connection get to finish (default: --grace-period)")
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="server processes sharing the three ports (SO_REUSEPORT), each with its own models; "
                        "statistics, /metrics, readiness and model control span all of them")
    s.add_argument("--traffic-key-header", default=None, metavar="NAME",
                   help="gRPC metadata / HTTP header naming the caller, hashed for shadow sampling and canary "
                        "arms before the models' key parameter and the request id (default: none read)")
    ops = s.add_argument_group("alerts and audit")
    ops.add_argument("--alerts", metavar="FILE",
                     help="alert hooks (JSON, TOML, or YAML with pyyaml): webhooks and commands called when drift "
                          "or canary guardrails cross their thresholds, once per episode")
    ops.add_argument("--audit-log", metavar="DIR",
                     help="keep a hash-chained, fsync'd audit log of loads, unloads, swaps, rollbacks, canary and "
                          "shadow changes in DIR (query and verify with `skewless audit DIR`)")
    ops.add_argument("--audit-max-mb", type=float, default=16.0, metavar="MB",
                     help="rotate the audit log file past this size (the chain continues in the next file)")
    lin = s.add_argument_group("lineage", "prediction log, delayed labels and live quality (README: Lineage)")
    lin.add_argument("--prediction-log", metavar="DIR", default=None,
                     help="write the prediction log of models whose config sets skewless.prediction_log_rate "
                          "under DIR/<model>/ (Parquet; needs pyarrow: pip install 'skewless[features]'); "
                          "also turns on label submission and live quality")
    lin.add_argument("--prediction-log-queue", type=int, default=4096, metavar="N",
                     help="requests held for the log writer; beyond it they are dropped and counted")
    lin.add_argument("--prediction-log-rotate-mb", type=float, default=64.0, metavar="MB",
                     help="close a log file and start the next one past this size")
    lin.add_argument("--prediction-log-rotate-seconds", type=float, default=3600.0, metavar="S",
                     help="... or this long after it was opened")
    lin.add_argument("--prediction-log-max-files", type=int, default=100, metavar="N",
                     help="rotated files kept per model and kind; older ones are deleted")
    lin.add_argument("--prediction-log-flush-seconds", type=float, default=1.0, metavar="S",
                     help="longest a logged request waits in memory before it is written")
    lin.add_argument("--label-max-pending", type=int, default=100_000, metavar="N",
                     help="labels held for predictions not logged yet (~400 bytes each)")
    lin.add_argument("--label-ttl", type=float, default=86_400.0, metavar="S",
                     help="how long such a label waits for its prediction")
    lin.add_argument("--quality-windows", type=float, nargs="+", default=[300.0, 3600.0], metavar="S",
                     help="rolling windows of the live quality metrics")
    s.set_defaults(func=_serve, parser=s)

    e = sub.add_parser("examples", help="write the bundled example model repository (or the test models)")
    e.add_argument("out")
    e.add_argument("--test-models", action="store_true")
    e.set_defaults(func=_examples)

    from skewless.benchmarks import loadgen
    from skewless.native import cli as features_cli
    from skewless.server.audit import cli as audit_cli
    from skewless.server.lineage import report as quality_report
    from skewless.server.registry import cli as registry_cli
    from skewless.server.shadow import cli as shadow_cli
    from skewless.server.telemetry import drift_report

    features_cli.register(sub)
    loadgen.register(sub)
    drift_report.register(sub)
    registry_cli.register(sub)
    shadow_cli.register(sub)
    audit_cli.register(sub)
    quality_report.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --workers N starts each worker with
    level = getattr(args, "sub_log_level", None) or args.log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

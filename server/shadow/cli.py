"""``skewless shadow``, ``skewless canary`` and ``skewless shadow-report``."""

from __future__ import annotations

import argparse
import sys


def _call(args: argparse.Namespace, method: str, request) -> int:
    import grpc

    from skewless.protos import skewless_traffic_pb2_grpc as pb_grpc

    with grpc.insecure_channel(args.url) as channel:
        try:
            status = getattr(pb_grpc.TrafficAdminStub(channel), method)(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"skewless {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(describe(status))
    return 0


def describe(s) -> str:
    """A TrafficStatus in a few lines."""
    lines = [f"model '{s.model}'"]
    if s.shadow_challenger:
        lines.append(f"  shadow -> {s.shadow_challenger} at {s.shadow_rate:.1%}")
        for p in s.pairs:
            lines.append(f"    {p.primary} vs {p.challenger}: mirrored {p.mirrored}, shed {p.shed}, errors {p.errors}, "
                         f"divergent {p.divergent}, agreement {p.agreement:.3f}")
    else:
        lines.append("  shadow: off")
    if s.canary_state:
        lines.append(f"  canary: version {s.canary_candidate} at {s.canary_weight:.1%} ({s.canary_state}"
                     + (f": {s.canary_reason}" if s.canary_reason else "") + ")")
        for a in s.arms:
            lines.append(f"    {a.arm} (version {a.version or 'default'}): served {a.served}, failed {a.failed}")
    else:
        lines.append("  canary: off")
    return "\n".join(lines)


def _shadow(args: argparse.Namespace) -> int:
    from skewless.protos import skewless_traffic_pb2 as pb

    if args.off:
        req = pb.SetShadowRequest(model=args.model)
    elif args.to is None:
        return _call(args, "GetTraffic", pb.ModelRef(model=args.model))
    else:
        req = pb.SetShadowRequest(model=args.model, challenger=args.to, rate=args.rate, tolerance=args.tolerance,
                                  log_dir=args.log_dir, key_parameter=args.key)
    return _call(args, "SetShadow", req)


def _canary(args: argparse.Namespace) -> int:
    from skewless.protos import skewless_traffic_pb2 as pb

    if args.promote:
        return _call(args, "PromoteCanary", pb.ModelRef(model=args.model))
    if args.rollback:
        return _call(args, "RollbackCanary", pb.ModelRef(model=args.model))
    if args.stop:
        return _call(args, "SetCanary", pb.SetCanaryRequest(model=args.model, stop=True))
    if args.candidate is None:
        return _call(args, "GetTraffic", pb.ModelRef(model=args.model))
    g = pb.CanaryGuardrails(window_s=args.window, min_requests=args.min_requests,
                            max_error_rate_increase=args.max_error_increase, max_p99_ratio=args.max_p99_ratio,
                            max_psi=args.max_psi, promote_after_s=args.promote_after)
    return _call(args, "SetCanary", pb.SetCanaryRequest(
        model=args.model, candidate=args.candidate, weight=args.weight, stable=args.stable, guardrails=g,
        key_parameter=args.key))


def _report(args: argparse.Namespace) -> int:
    try:  # the report reads the log into pandas and plots with matplotlib: neither is a server dependency
        import matplotlib  # noqa: F401
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as exc:
        print(f"skewless shadow-report: error: needs {exc.name or 'pandas and matplotlib'}: "
              "pip install 'skewless[report]'", file=sys.stderr)
        return 2
    from .report import run_report

    return run_report(args.log, args.png, args.json)


def register(sub: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("model")
        p.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address")
        p.add_argument("--timeout", type=float, default=30.0)
        p.add_argument("--key", default="", help="request parameter hashed for sampling / arm assignment "
                                                 "(default: keep the current one; initially the request id)")

    s = sub.add_parser("shadow", help="mirror a share of a model's requests to a challenger (no --to: status)")
    common(s)
    s.add_argument("--to", default=None, metavar="CHALLENGER", help="MODEL or MODEL:VERSION")
    s.add_argument("--rate", type=float, default=1.0, help="fraction of requests mirrored, 0-1 (default 1)")
    s.add_argument("--tolerance", type=float, default=0.0, help="divergence threshold (default 1e-6)")
    s.add_argument("--log-dir", default="", help="write divergent samples as Parquet under this directory")
    s.add_argument("--off", action="store_true", help="stop mirroring")
    s.set_defaults(func=_shadow)

    c = sub.add_parser("canary", help="split a model's traffic with a candidate version, guarded; promote or "
                                      "roll back (no candidate: status)")
    common(c)
    c.add_argument("--candidate", type=int, default=None, metavar="VERSION")
    c.add_argument("--weight", type=float, default=0.05, help="the candidate's share, 0-1 (default 0.05)")
    c.add_argument("--stable", type=int, default=0, help="the version to compare against (default: the highest "
                                                         "other serving one)")
    c.add_argument("--window", type=float, default=0.0, help="guardrail window in seconds (default 30)")
    c.add_argument("--min-requests", type=int, default=0, help="per arm before any verdict (default 20)")
    c.add_argument("--max-error-increase", type=float, default=0.0, help="default 0.05")
    c.add_argument("--max-p99-ratio", type=float, default=0.0, help="default 2")
    c.add_argument("--max-psi", type=float, default=0.0, help="default 0.25")
    c.add_argument("--promote-after", type=float, default=0.0, help="promote after this many clean seconds")
    action = c.add_mutually_exclusive_group()
    action.add_argument("--promote", action="store_true", help="send all unversioned traffic to the candidate")
    action.add_argument("--rollback", action="store_true", help="set the candidate's share to 0 now")
    action.add_argument("--stop", action="store_true", help="end the canary")
    c.set_defaults(func=_canary)

    r = sub.add_parser("shadow-report", help="summarise a shadow divergence log and plot it (PNG)")
    r.add_argument("log", help="a divergence log directory (or one .parquet file)")
    r.add_argument("--png", default="shadow-report.png")
    r.add_argument("--json", default=None, help="also write the summary as JSON here")
    r.set_defaults(func=_report)

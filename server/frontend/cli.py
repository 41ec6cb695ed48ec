"""The ``skewless`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .options import ServerOptions, add_serve_arguments


def _serve(args: argparse.Namespace) -> int:
    from ..workers.cluster import WorkerPlace
    from .app import run

    opts = ServerOptions.from_args(args, args.parser.error)
    if opts.workers.count > 1:
        from ..workers.supervisor import run_workers

        return run_workers(args.argv, opts.workers.count, opts.listen.host,
                           (opts.listen.grpc_port, opts.listen.http_port, opts.listen.metrics_port),
                           opts.listen.grace_period_s)
    opts.worker = WorkerPlace.from_env()
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


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", dest="sub_log_level", default=None,
                        choices=["debug", "info", "warning", "error"],
                        help="log level of the server (default: skewless --log-level, info)")
    add_serve_arguments(parser)


def flags_markdown() -> str:
    """Every ``skewless serve`` flag as a Markdown table (flag, default, meaning, area), read from the parser
    itself (for docs/reference/cli.md)."""
    parser = argparse.ArgumentParser(prog="skewless serve")
    _serve_arguments(parser)
    formatter = parser._get_formatter()
    rows = ["| Flag | Default | Meaning | Area |", "| --- | --- | --- | --- |"]
    for group in parser._action_groups:
        area = "general" if group.title in ("options", "optional arguments", "positional arguments") else group.title
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            flag = formatter._format_action_invocation(action)
            default = "" if action.default in (None, [], argparse.SUPPRESS) else action.default
            if isinstance(default, bool):
                default = "on" if default else "off"
            elif isinstance(default, list):
                default = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
            cells = (f"`{flag}`", f"`{default}`" if default != "" else "", action.help or "", area)
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skewless", description=__doc__)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve a Triton-layout model repository over KServe v2 gRPC and HTTP/REST")
    _serve_arguments(s)
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
    from . import status_cli

    status_cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --workers N starts each worker with
    level = getattr(args, "sub_log_level", None) or args.log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""``skewless serve``'s flags, declared by each area's settings object: the flags users rely on are all there,
each area reads its own back with the same defaults its dataclass has, bad values are refused with the
same messages, the reference table lists every flag, and the settings modules import nothing heavy."""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from skewless.server.frontend.cli import build_parser, flags_markdown
from skewless.server.frontend.options import SERVE_GROUPS, ServerOptions
from skewless.server.models.settings import RepositorySettings

ROOT = Path(__file__).resolve().parents[1]
# Every flag `skewless serve` had when its options were declared per area: scripts, manifests and docs use them.
FLAGS = (
    "--model-repository", "--registry", "--registry-model", "--host", "--http-port", "--grpc-port",
    "--metrics-port", "--metrics", "--no-metrics", "--model-control-mode", "--load-model",
    "--repository-poll-secs", "--registry-cache", "--registry-cache-gb", "--registry-max-backoff",
    "--registry-keep", "--max-message-bytes", "--http-max-input-size", "--grace-period", "--default-max-batch-size",
    "--log-level",
    "--tls-cert", "--tls-key", "--tls-client-ca", "--tls-client-auth", "--auth-principals", "--rate-limit",
    "--max-inflight", "--grpc-keepalive-time", "--grpc-keepalive-timeout", "--grpc-min-client-ping-interval",
    "--grpc-max-concurrent-streams", "--grpc-max-connection-age", "--grpc-max-pending",
    "--http-header-timeout", "--grpc-max-connection-age-grace", "--workers", "--traffic-key-header",
    "--alerts", "--audit-log", "--audit-max-mb", "--prediction-log", "--prediction-log-queue",
    "--prediction-log-rotate-mb", "--prediction-log-rotate-seconds", "--prediction-log-max-files",
    "--prediction-log-flush-seconds", "--label-max-pending", "--label-ttl", "--quality-windows",
)


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def _options(*argv: str) -> ServerOptions:
    args = build_parser().parse_args(["serve", *argv])

    def error(message: str):
        raise ValueError(message)

    return ServerOptions.from_args(args, error)


def test_every_flag_is_still_there():
    have = {s for a in _serve_parser()._actions for s in a.option_strings}
    assert not set(FLAGS) - have


def test_each_flag_is_declared_by_one_area():
    parser = _serve_parser()
    titles = [t for t, _, _ in SERVE_GROUPS]
    by_group = {g.title: [s for a in g._group_actions for s in a.option_strings] for g in parser._action_groups}
    assert set(titles) <= set(by_group)
    declared = [f for t in titles for f in by_group[t]]
    assert len(declared) == len(set(declared))
    # outside the areas' groups: only the command's own --log-level (and -h)
    assert {f for a in parser._actions for f in a.option_strings} - set(declared) == {"-h", "--help", "--log-level"}


def test_defaults_of_the_flags_are_the_defaults_of_the_settings():
    opts = _options("--model-repository", "models")
    assert opts == ServerOptions(repository=RepositorySettings(location="models"))


def test_each_area_reads_its_flags(tmp_path):
    opts = _options("--model-repository", "m", "--host", "0.0.0.0", "--grpc-port", "0", "--no-metrics",
                    "--max-inflight", "0", "--grpc-max-connection-age", "60", "--traffic-key-header", "x-user",
                    "--audit-log", str(tmp_path), "--audit-max-mb", "0.5", "--prediction-log", str(tmp_path),
                    "--quality-windows", "60", "--registry-cache-gb", "0.5", "--load-model", "a",
                    "--load-model", "b", "--model-control-mode", "explicit", "--rate-limit", "5")
    assert (opts.listen.host, opts.listen.grpc_port, opts.telemetry.metrics) == ("0.0.0.0", 0, False)
    assert (opts.connections.max_inflight, opts.connections.grpc_max_connection_age_s) == (0, 60.0)
    assert opts.traffic.key_header == "x-user"
    assert (opts.audit.directory, opts.audit.max_bytes) == (tmp_path, 2**19)
    assert (opts.lineage.prediction_log, opts.lineage.quality_windows_s) == (tmp_path, (60.0,))
    assert opts.registry.cache_bytes == 2**29
    assert (opts.repository.control_mode, opts.repository.load_models) == ("explicit", ["a", "b"])
    assert opts.security.rate_limit == 5.0
    assert _options("--registry", "mlflow://h:5000").repository.control_mode == "poll"


M = ("--model-repository", "m")


@pytest.mark.parametrize("argv,message", [
    ((), "one of --model-repository or --registry is required"),
    ((*M, "--registry", "mlflow://h:1"), "--model-repository and --registry are alternatives"),
    ((*M, "--registry-model", "a"), "--registry-model needs --registry"),
    ((*M, "--registry-max-backoff", "0"), "--registry-max-backoff must be a positive number of seconds"),
    ((*M, "--http-header-timeout", "0"), "--http-header-timeout must be positive"),
    ((*M, "--http-max-input-size", "0"), "--http-max-input-size must be greater than 0"),
    ((*M, "--grpc-max-pending", "0"), "--grpc-max-pending must be at least 1"),
    ((*M, "--max-inflight", "-1"), "--max-inflight and --grpc-max-concurrent-streams must be 0 (no limit) or more"),
    ((*M, "--workers", "0"), "--workers must be at least 1"),
    ((*M, "--workers", "2", "--audit-log", "d"), "--workers > 1 does not combine with --prediction-log or --audit-log"),
    ((*M, "--rate-limit", "0"), "--rate-limit must be a positive number of requests per second"),
    ((*M, "--auth-principals", "/nonexistent"), "--auth-principals: "),
    ((*M, "--alerts", "/nonexistent.json"), "--alerts: "),
    ((*M, "--tls-cert", "c.pem"), "--tls-cert and --tls-key go together"),
    ((*M, "--tls-cert", "/nonexistent/c", "--tls-key", "/nonexistent/k"), "--tls-cert /nonexistent/c: no such file"),
])
def test_bad_flags_are_refused(argv, message):
    with pytest.raises(ValueError) as info:
        _options(*argv)
    assert message in str(info.value)


def test_the_reference_table_lists_every_flag():
    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    marker = re.search(r"<!-- generated: ([\w.]+):(\w+) -->", page)
    assert marker, "docs/reference/cli.md lacks its generated-table marker"
    table = getattr(importlib.import_module(marker[1]), marker[2])()
    assert table == flags_markdown()
    rows = {row.split("`")[1].split(" ")[0].rstrip(","): row for row in table.splitlines() if row.startswith("| `")}
    assert set(FLAGS) - {"--no-metrics"} <= set(rows)
    # flags show their metavar as --help does
    assert rows["--grace-period"].startswith("| `--grace-period GRACE_PERIOD` | `30.0` | seconds in-flight")
    assert rows["--tls-cert"].endswith("| security |")
    assert "`--metrics, --no-metrics` | `on` |" in rows["--metrics"]
    assert "`300 3600`" in rows["--quality-windows"]


def test_settings_modules_import_nothing_heavy():
    modules = ["skewless.server.frontend.options", "skewless.server.parameters"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted(m for m in ('grpc', 'numpy', 'onnxruntime', 'pyarrow', 'google.protobuf') "
              "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

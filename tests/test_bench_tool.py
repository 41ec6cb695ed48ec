"""Smoke tests of the load-test tool: it runs for about a second against real servers and writes sane output.

They prove the tool works (requests answered, no errors, spot-checks pass, files written); they never judge a
speed, which on a shared CI machine would only be noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from skewless.benchmarks import loadgen
from skewless.benchmarks.servers import EXAMPLE_MODELS, ServerProcess, start_echo, start_skewless
from skewless.benchmarks.workload import id_suffix
from skewless.protos import grpc_service_pb2 as pb

pytestmark = pytest.mark.slow  # the slow tier: load-generator smoke runs against real servers

pytest.importorskip("psutil")
pytest.importorskip("matplotlib")

MLP_ONNX = EXAMPLE_MODELS / "mlp" / "1" / "model.onnx"
SHORT = {"duration": 1.0, "warmup": 0.3, "progress": False, "check_every": 5}


@pytest.fixture(scope="module")
def skewless_server(tmp_path_factory: pytest.TempPathFactory):
    with start_skewless(log_path=tmp_path_factory.mktemp("skewless") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def echo_server():
    with start_echo() as srv:
        yield srv


def check_point(p: dict[str, Any], server_stats: bool) -> None:
    assert p["requests"] > 0 and p["throughput_rps"] > 0
    assert p["error_count"] == 0, (p["errors"], p["error_messages"])
    lat = p["latency_ms"]
    assert lat["count"] > 0
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert p["checks"]["checked"] > 0 and p["checks"]["failed"] == 0, p["checks"]
    assert p["server_cpu"]["seconds"] >= 0 and p["server_cpu"]["us_per_request"] is not None
    if server_stats:
        assert p["server_stats"]["execution_count"] > 0 and p["server_stats"]["mean_batch_size"] >= 1
    else:
        assert p["server_stats"] is None


def load(out: Path) -> dict[str, Any]:
    assert (out / "bench.png").stat().st_size > 0
    assert (out / "bench.txt").read_text().strip()
    return json.loads((out / "bench.json").read_text())


def test_closed_and_open_loop_against_skewless(skewless_server: ServerProcess, tmp_path: Path) -> None:
    cfg = loadgen.BenchConfig(target=skewless_server.target, model="mlp", concurrency=[1, 4], rates=["200"],
                              server_pid=skewless_server.pid, check_against_onnx=str(MLP_ONNX),
                              out=str(tmp_path), **SHORT)
    loadgen.run_bench(cfg)
    result = load(tmp_path)
    assert result["target"]["server"] == "skewless" and result["workload"]["rows"] == 1
    assert [(p["mode"], p["concurrency"], p["offered_rate"]) for p in result["points"]] == [
        ("closed", 1, None), ("closed", 4, None), ("open", None, 200.0)]
    for p in result["points"]:
        check_point(p, server_stats=True)
    assert result["points"][2]["send_lag_ms"]["mean"] >= 0


def test_stream_cli_against_skewless(skewless_server: ServerProcess, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc = loadgen.main(["-u", skewless_server.target, "-m", "mlp", "--stream", "--streams", "2", "--concurrency", "4",
                       "--rows", "3", "--duration", "1", "--warmup", "0.3", "--check-every", "5",
                       "--check-against-onnx", str(MLP_ONNX), "--server-pid", str(skewless_server.pid),
                       "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    assert "stream c=4" in capsys.readouterr().out
    result = load(tmp_path)
    assert result["workload"]["rows"] == 3 and result["config"]["streams"] == 2
    check_point(result["points"][0], server_stats=True)


def test_stream_against_echo_server(echo_server: ServerProcess, tmp_path: Path) -> None:
    cfg = loadgen.BenchConfig(target=echo_server.target, model="mlp", concurrency=[4], rates=["200"],
                              stream=True, server_pid=echo_server.pid, out=str(tmp_path), **SHORT)
    loadgen.run_bench(cfg)
    result = load(tmp_path)
    assert result["target"]["statistics"].startswith("UNIMPLEMENTED")
    for p in result["points"]:
        assert p["stream"]
        check_point(p, server_stats=False)


def test_id_suffix_sets_the_request_id() -> None:
    base = pb.ModelInferRequest(model_name="mlp", id="old").SerializeToString()
    for rid in ("7", "x" * 300):
        assert pb.ModelInferRequest.FromString(base + id_suffix(rid)).id == rid


def test_register_adds_bench_subcommand() -> None:
    parser = argparse.ArgumentParser(prog="skewless")
    loadgen.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "-m", "mlp", "--concurrency", "1,8,64", "--rate", "100,80%"])
    assert args.func is loadgen.run_from_args
    assert args.concurrency == [1, 8, 64] and args.rate == ["100", "80%"]

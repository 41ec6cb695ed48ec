"""Smoke test of the peer table: a very short run of the three peers that need no venv of their own.

It proves the script works end to end (each server started, driven over the transports it speaks and stopped,
rows present with figures, replies spot-checked, JSON/PNG/table written, a peer that cannot be built reported
as skipped rather than crashing the run); it never judges a speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("psutil")
pytest.importorskip("matplotlib")
pytest.importorskip("onnx")

from helpers import child_servers  # noqa: E402

from skewless.benchmarks import peers  # noqa: E402

MARKERS = ("skewless.server.frontend.cli", "skewless.benchmarks.echo_server", "skewless.benchmarks.naive_server")


def test_quick_run_writes_the_expected_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = set(child_servers(*MARKERS))
    clients = [1, 4]
    rc = peers.main(["--quick", "--peers", "skewless,naive,echo", "--clients", ",".join(map(str, clients)),
                     "--duration", "0.5", "--warmup", "0.2", "--out", str(tmp_path)])
    assert rc == 0
    assert not set(child_servers(*MARKERS)) - before, "a server was left running"
    data = json.loads((tmp_path / "peers.json").read_text())
    assert data["skipped"] == []
    got = {(r["peer"], r["model"], r["transport"], r["clients"]) for r in data["rows"]}
    want = {(p, m, t, c) for m in peers.MODELS for c in clients
            for p, t in (("skewless", "grpc"), ("skewless", "rest"), ("naive", "grpc"), ("echo", "grpc"))}
    assert got == want
    for r in data["rows"]:
        assert r["rps"] > 0 and r["errors"] == 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["cpu_us_per_request"] is not None and r["cpu_us_per_request"] > 0
        if r["peer"] != "echo":  # the echo's fixed reply is not a model's answer
            assert r["checked"] > 0 and r["check_failed"] == 0, r
    assert (tmp_path / "peers.png").stat().st_size > 0
    table = (tmp_path / "peers.txt").read_text()
    assert table.strip() in capsys.readouterr().out
    for m in peers.MODELS:
        assert m in table
    assert peers.PEERS["naive"].title in table


def test_a_peer_whose_venv_cannot_be_built_is_skipped(tmp_path: Path) -> None:
    # An invalid requirement: pip refuses it locally, without asking any index.
    broken = peers.Peer("kserve", "KServe", ("=not a requirement=",))
    with pytest.raises(peers.PeerSkipped, match="venv build failed"):
        peers.ensure_venv(broken, tmp_path / "venvs", show_progress=False)
    assert not (tmp_path / "venvs" / "kserve" / "skewless-peer.json").exists()


def test_a_built_venv_is_reused(tmp_path: Path) -> None:
    peer = peers.Peer("kserve", "KServe", ())  # no packages: the venv alone, nothing fetched
    python = peers.ensure_venv(peer, tmp_path, show_progress=False)
    assert python.exists()
    stamp = (tmp_path / "kserve" / "skewless-peer.json").stat().st_mtime_ns
    assert peers.ensure_venv(peer, tmp_path, show_progress=False) == python
    assert (tmp_path / "kserve" / "skewless-peer.json").stat().st_mtime_ns == stamp


def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--peers", "skewless,tensorflow-serving"], ["--clients", "0"], ["--transports", "http2"]):
        with pytest.raises(SystemExit) as exc:
            peers.main(argv)
        assert exc.value.code == 2
    assert "choose from" in capsys.readouterr().err


def test_a_peer_that_does_not_start_is_skipped_and_the_rest_still_run(tmp_path: Path) -> None:
    """A Triton venv without PyTriton in it (a real venv, marked as built): its launcher fails to import, the
    run reports it as skipped with the cause from its log, and still measures the echo server."""
    venvs = tmp_path / "venvs"
    python = peers.ensure_venv(peers.Peer("triton", "", ()), venvs, show_progress=False)
    marker = venvs / "triton" / "skewless-peer.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()),
                                  "packages": list(peers.PEERS["triton"].packages)}))
    assert peers.ensure_venv(peers.PEERS["triton"], venvs, show_progress=False) == python
    out = tmp_path / "out"
    rc = peers.main(["--quick", "--peers", "triton,echo", "--models", "mlp_small", "--clients", "1",
                     "--duration", "0.3", "--warmup", "0.1", "--venv-dir", str(venvs), "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "peers.json").read_text())
    (skip,) = data["skipped"]
    assert skip["peer"] == "triton" and "did not start" in skip["reason"] and "No module named" in skip["reason"]
    assert {(r["peer"], r["clients"]) for r in data["rows"]} == {("echo", 1)}
    assert "skipped: triton" in (out / "peers.txt").read_text()

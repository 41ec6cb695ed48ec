"""Status snapshots: each side module's ``status()`` behind GET /v2/status[/MODULE] on the metrics port.

Real servers (subprocesses on free ports) with the prediction log, the audit log, an alert hook and a fallback
on; real gRPC inference and the real labels route move the figures. The board itself is checked in-process."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import infer, wait_until
from serverproc import ServerProcess

from skewless.server.status import StatusBoard

LOGGED = """
parameters { key: "skewless.prediction_log_rate" value { string_value: "1" } }
parameters { key: "skewless.task" value { string_value: "classification" } }
parameters { key: "skewless.fallback" value { string_value: "{\\"outputs\\": {\\"probabilities\\": [0.5, 0.5]}}" } }
"""


def get(url: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, json.loads(body) if body.startswith(b"{") else {"text": body.decode()}


def test_board_isolates_a_failing_provider_and_refuses_a_second_name():
    board = StatusBoard()
    board.register("good", lambda: {"n": 1})
    board.register("bad", lambda: 1 / 0)
    with pytest.raises(ValueError, match="already registered"):
        board.register("good", dict)
    assert board.names == ["good", "bad"]
    assert board.snapshot("missing") is None
    snaps = board.snapshot_all()
    assert snaps["good"] == {"n": 1}
    assert snaps["bad"]["error"].startswith("ZeroDivisionError")


@pytest.fixture(scope="module")
def server(make_repo, tmp_path_factory) -> Iterator[tuple[ServerProcess, Path, Path]]:
    repo = make_repo("mlp")
    with open(repo / "mlp" / "config.pbtxt", "a") as f:
        f.write(LOGGED)
    work = tmp_path_factory.mktemp("status")
    alerts = work / "alerts.json"
    alerts.write_text(json.dumps({"commands": [{"name": "noop", "argv": [sys.executable, "-c", "pass"]}]}))
    logdir, auditdir = work / "predictions", work / "audit"
    proc = ServerProcess(repo, "--prediction-log", str(logdir), "--prediction-log-rotate-seconds", "0.3",
                         "--prediction-log-flush-seconds", "0.05", "--audit-log", str(auditdir),
                         "--alerts", str(alerts)).start()
    yield proc, logdir, auditdir
    proc.assert_clean_exit()


def test_route_lists_each_enabled_module_and_refuses_unknown(server):
    proc, logdir, auditdir = server
    code, doc = get(f"{proc.http_url}/v2/status")
    assert code == 200 and doc["worker"] is None
    assert set(doc["modules"]) == {"lineage", "alerts", "audit", "fallback", "traffic", "drift", "aggregates"}
    assert doc["modules"]["aggregates"] == {"state_dir": None, "save_interval_s": 60.0, "max_keys": 0,
                                           "store": None, "models": {}}
    assert doc["modules"]["alerts"]["hooks"] == [{"name": "noop", "type": "command", "calls": {}}]
    assert doc["modules"]["fallback"]["models"]["mlp"]["1"]["policy"] == "constant"
    assert doc["modules"]["lineage"]["prediction_log"]["directory"] == str(logdir)
    # the audit head is the last record written: the start-up load
    code, audit = get(f"{proc.http_url}/v2/status/audit")
    assert code == 200 and audit["module"] == "audit"
    records = [json.loads(line) for f in sorted(auditdir.glob("audit-*.jsonl")) for line in f.read_text().splitlines()]
    assert audit["status"]["records"] == records[-1]["seq"] >= 1
    assert audit["status"]["head_hash"] == records[-1]["hash"]
    code, err = get(f"{proc.http_url}/v2/status/nope")
    assert code == 404 and "no status for module 'nope'" in err["error"] and "lineage" in err["error"]


def test_prediction_log_and_labels_move_with_traffic(server):
    proc, _, _ = server
    base = f"{proc.http_url}/v2/status/lineage"
    before = get(base)[1]["status"]
    x = np.random.default_rng(3).random((4, 32), dtype=np.float32)
    with grpcclient.InferenceServerClient(proc.grpc_url) as client:
        for i in range(3):
            infer(client, "mlp", {"input": x}, request_id=f"status-{i}")

    def written() -> bool:
        plog = get(base)[1]["status"]["prediction_log"]
        return plog["rows_written"] >= before["prediction_log"]["rows_written"] + 12 and plog["files_written"] > 0

    wait_until(written, 20, "the prediction log to write the rows")
    plog = get(base)[1]["status"]["prediction_log"]
    assert plog["models"]["mlp"]["rows_written"] >= 12 and plog["queued"] == 0 and plog["dropped"] == 0
    labels = [{"id": "status-0", "values": [1, 0, 1, 0]}, {"id": "status-1", "values": [1, 1, 1, 1]}]
    req = urllib.request.Request(f"http://{proc.rest_url}/v2/models/mlp/labels",
                                 json.dumps({"labels": labels}).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["joined"] == 2
    after = get(base)[1]["status"]["labels"]
    assert after["joined"] == before["labels"]["joined"] + 2
    assert after["outcomes"]["joined"] == before["labels"]["outcomes"]["joined"] + 2
    # the CLI prints the same document
    from skewless.server.frontend.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["status", "lineage", "--url", f"{proc.http_url}"]) == 0
    assert json.loads(out.getvalue())["status"]["labels"]["joined"] == after["joined"]


PRINCIPALS = """
operator     admin,metadata           token:op-secret
dashboard    metadata                 token:dash-secret
"""


def test_route_needs_an_admin_principal(make_repo, tmp_path):
    principals = tmp_path / "principals.txt"
    principals.write_text(PRINCIPALS)
    proc = ServerProcess(make_repo("mlp"), "--auth-principals", str(principals)).start()
    try:
        url = f"{proc.http_url}/v2/status"
        assert get(url)[0] == 401
        assert get(url, "dash-secret")[0] == 403
        code, doc = get(url, "op-secret")
        assert code == 200 and "fallback" in doc["modules"] and "lineage" not in doc["modules"]
        assert get(url + "/fallback", "op-secret")[0] == 200
        assert get(url + "/fallback")[0] == 401
    finally:
        proc.assert_clean_exit()


def test_cli_says_when_the_server_cannot_be_reached(capsys):
    from skewless.server.frontend.cli import main

    with socket.socket() as sock:  # a free port with no listener once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["status", "--url", f"http://127.0.0.1:{port}", "--timeout", "2"]) == 2
    assert f"cannot reach http://127.0.0.1:{port}/v2/status" in capsys.readouterr().err


def test_registry_status_follows_polls(make_repo, tmp_path):
    repo = make_repo("mlp")
    proc = ServerProcess(Path("unused"), "--model-repository", f"file://{repo}", "--model-control-mode", "poll",
                         "--repository-poll-secs", "0.2", "--registry-cache", str(tmp_path / "cache")).start()
    try:
        url = f"{proc.http_url}/v2/status/registry"
        wait_until(lambda: get(url)[1]["status"]["last_poll_ok"] is True, 20, "a registry poll")
        st = get(url)[1]["status"]
        assert st["source"].startswith("file://") and st["reachable"] and st["failures"] == 0
        assert st["models"]["mlp"]["serving"] == [1] and st["models"]["mlp"]["pinned"] is False
        assert st["cache_bytes"] > 0
    finally:
        proc.assert_clean_exit()


@pytest.mark.slow  # two worker processes
def test_each_worker_answers_for_itself(make_repo):
    proc = ServerProcess(make_repo("mlp"), "--workers", "2", start_timeout=60).start()
    try:
        seen = set()
        for _ in range(40):
            code, doc = get(f"{proc.http_url}/v2/status")
            assert code == 200 and "fallback" in doc["modules"]
            seen.add(doc["worker"])
            if seen == {0, 1}:
                break
        assert seen <= {0, 1} and seen  # the kernel picks the worker: at least one answered, named by index
    finally:
        proc.assert_clean_exit()


def test_drift_status_names_the_alarms(tmp_path_factory, tmp_path):
    # the drift suite's own fixtures and helpers: a real churn model with its feature spec
    from test_drift import FAST, WINDOW, load, monitor_for, raw, serve, shift, write_churn_model

    churn_dir = tmp_path_factory.mktemp("churn_status")
    write_churn_model(churn_dir)
    mv = load(churn_dir / "churn", tmp_path, FAST)
    monitor = monitor_for(mv)
    quiet = monitor.status()
    assert quiet["feature_psi"] == {} and quiet["alarms"] == [] and quiet["window_rows"] == WINDOW
    serve(mv, shift(raw(WINDOW, seed=11), {"monthly_charges"}))
    assert monitor.flush()
    st = monitor.status()
    json.dumps(st)  # JSON-able as the route sends it
    assert st["feature_psi"]["monthly_charges"] >= 0.25
    assert {"kind": "feature", "name": "monthly_charges", "level": "alert"} in st["alarms"]
    assert st["sampled_rows"] == WINDOW
    monitor.close()

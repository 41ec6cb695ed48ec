"""The audit log (server/audit/): a real server with --audit-log and a principals file records loads, a config
override, unloads and shadow changes made over gRPC and HTTP with the principal that made them, rotated over
several files; ``skewless audit --verify`` passes on it and names the first edited, deleted or reordered line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import add_constant_model, write_versions
from serverproc import ServerProcess

from skewless.protos import skewless_traffic_pb2 as tpb
from skewless.protos import skewless_traffic_pb2_grpc as tpb_grpc
from skewless.server.audit.log import AuditLog, files, verify

pytestmark = pytest.mark.slow  # the slow tier: real servers with principals and an audit log, restarted

PRINCIPALS = "operator  admin,metadata  token:op-secret\ndeployer  admin,metadata  token:deploy-secret\n"
OP = {"authorization": "Bearer op-secret"}
DEPLOY = {"Authorization": "Bearer deploy-secret"}


def audit_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skewless.server.frontend.cli", "audit", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audit")
    repo, log = root / "repo", root / "log"
    config = "max_batch_size: 8\n"
    write_versions(repo / "a", {1: add_constant_model(1.0)}, config)
    write_versions(repo / "twin", {1: add_constant_model(1.0)}, config)
    write_versions(repo / "b", {1: add_constant_model(1.0), 2: add_constant_model(2.0)}, config)
    (root / "principals.txt").write_text(PRINCIPALS)
    srv = ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "a", "--load-model", "twin",
                        "--audit-log", str(log), "--audit-max-mb", "0.002",
                        "--auth-principals", str(root / "principals.txt")).start()
    try:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        client.load_model("b", headers=OP)
        client.load_model("b", headers=OP, config=json.dumps({"max_batch_size": 4, "version_policy": {"all": {}}}))
        httpclient.InferenceServerClient(srv.rest_url).unload_model("b", headers=DEPLOY)
        with grpc.insecure_channel(srv.grpc_url) as ch:
            admin = tpb_grpc.TrafficAdminStub(ch)
            md = list(OP.items())
            admin.SetShadow(tpb.SetShadowRequest(model="a", challenger="twin", rate=0.5), metadata=md)
            admin.SetShadow(tpb.SetShadowRequest(model="a", challenger=""), metadata=md)
    finally:
        srv.stop()
    return log


def records(log: Path) -> list[dict]:
    return [json.loads(line) for f in files(log) for line in f.read_text().splitlines()]


def test_records_what_changed_who_and_when(audit_dir):
    recs = records(audit_dir)
    got = [(r["event"], r["model"], r["principal"], r["before"], r["after"]) for r in recs]
    assert got[:2] == [("load", "a", "server", None, [1]), ("load", "twin", "server", None, [1])]
    assert got[2:5] == [("load", "b", "operator", None, [2]),
                        ("config_override", "b", "operator", None, {"max_batch_size": 4,
                                                                    "version_policy": {"all": {}}}),
                        ("swap", "b", "operator", [2], [1, 2])]
    assert got[5] == ("unload", "b", "deployer", [1, 2], None)
    assert got[6] == ("shadow", "a", "operator", None, {"target": "twin", "rate": 0.5})
    assert got[7] == ("shadow", "a", "operator", {"target": "twin", "rate": 0.5}, None)
    assert got[8:] == [("unload", "a", "server", [1], None), ("unload", "twin", "server", [1], None)]
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert len(files(audit_dir)) > 1  # rotated, the chain continuing across files


def test_verify_passes_and_queries_filter(audit_dir):
    done = audit_cli(str(audit_dir), "--verify")
    assert done.returncode == 0 and "intact: 10 records" in done.stdout, done.stdout + done.stderr
    done = audit_cli(str(audit_dir), "--model", "b", "--principal", "operator", "--json")
    assert [json.loads(line)["event"] for line in done.stdout.splitlines()] == ["load", "config_override", "swap"]
    done = audit_cli(str(audit_dir), "--event", "shadow", "--since", "2020-01-01T00:00:00")
    assert done.stdout.count(" shadow ") == 2 and "by operator" in done.stdout


def _tampered(audit_dir: Path, tmp_path: Path, change) -> subprocess.CompletedProcess:
    copy = tmp_path / "copy"
    shutil.copytree(audit_dir, copy)
    lines = [(f, n) for f in files(copy) for n in range(len(f.read_text().splitlines()))]
    change(lines)
    return audit_cli(str(copy), "--verify")


def _rewrite(f: Path, fn) -> None:
    lines = f.read_text().splitlines(keepends=True)
    f.write_text("".join(fn(lines)))


@pytest.mark.parametrize("how, expect", [
    ("edit", "altered"), ("delete", "missing or reordered"), ("reorder", "missing or reordered"),
    ("edit_prev", "prev hash mismatch")])
def test_tampering_is_caught(audit_dir, tmp_path, how, expect):
    def change(lines):
        f, n = lines[3]  # the fourth record, wherever rotation put it
        if how == "edit":
            _rewrite(f, lambda ls: [ls[i].replace('"operator"', '"mallory"') if i == n else ls[i]
                                    for i in range(len(ls))])
        elif how == "delete":
            _rewrite(f, lambda ls: [ls[i] for i in range(len(ls)) if i != n])
        elif how == "reorder":
            f2, n2 = lines[4]
            if f2 == f:
                _rewrite(f, lambda ls: [ls[n2] if i == n else ls[n] if i == n2 else ls[i] for i in range(len(ls))])
            else:  # across a rotation boundary: move the record into the next file
                line = f.read_text().splitlines(keepends=True)[n]
                _rewrite(f, lambda ls: [x for i, x in enumerate(ls) if i != n])
                _rewrite(f2, lambda ls: [ls[0], line, *ls[1:]])
        else:  # a forged record: consistent hash of its own, but it does not follow the one before
            rec = json.loads(f.read_text().splitlines()[n])
            rec["principal"] = "mallory"
            from skewless.server.audit.log import record_hash
            rec["hash"] = record_hash(rec)
            _rewrite(f, lambda ls: [json.dumps(rec) + "\n" if i == n else ls[i] for i in range(len(ls))])

    done = _tampered(audit_dir, tmp_path, change)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout and expect in done.stdout, done.stdout
    assert "3 records verified before it" in done.stdout or how == "edit_prev", done.stdout


def test_chain_resumes_after_restart(audit_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(audit_dir, copy)
    log = AuditLog(copy, max_bytes=1 << 20)
    rec = log.record("pin", "a", [1], [1], principal="server")
    log.close()
    assert rec["seq"] == 11
    assert verify(copy) == (11, None)

"""Alert hooks (server/alerts/): a real drift monitor over real churn batches raises a drift alert that reaches
a real local webhook exactly once per episode (retried after failing responses); a real server with --alerts
calls its webhook and its command on a canary rollback and counts the calls on /metrics."""

from __future__ import annotations

import json
import sys
import time
import urllib.request

import grpc
import pytest
from helpers import add_constant_model, wait_until, write_versions
from prometheus_client.parser import text_string_to_metric_families
from serverproc import ServerProcess
from test_drift import FAST, WINDOW, churn_dir, load, monitor_for, raw, serve, shift  # noqa: F401 (fixture)
from webhook import WebhookReceiver

from skewless.protos import skewless_traffic_pb2 as tpb
from skewless.protos import skewless_traffic_pb2_grpc as tpb_grpc
from skewless.server.alerts import AlertHub
from skewless.server.alerts.hub import load_settings, parse_settings


def test_drift_alert_once_per_episode_with_retries(churn_dir, tmp_path):  # noqa: F811
    with WebhookReceiver(fail_first=2) as hook:
        hub = AlertHub(parse_settings({"webhooks": [{"name": "ops", "url": hook.url, "retries": 3,
                                                     "backoff_s": 0.05, "headers": {"X-Team": "ml"}}],
                                       "renotify_s": 0}, "test"))
        mv = load(churn_dir, tmp_path, {**FAST, "skewless.prediction_reference": "off"})
        monitor = monitor_for(mv)
        hub.attach_drift(mv)
        shifted = shift(raw(WINDOW, seed=41), {"monthly_charges"})
        for _ in range(3):  # drifted on three recomputes: one episode, one alert
            serve(mv, shifted)
            assert monitor.flush()
        wait_until(lambda: len(hook.received) == 1, 10, "the first drift alert")
        time.sleep(0.3)
        assert len(hook.received) == 1 and hook.attempts == 3  # two HTTP 500s, then delivered
        alert = hook.received[0]
        assert alert["kind"] == "drift" and alert["subject"] == "churn/1/feature/monthly_charges"
        assert alert["value"] >= alert["threshold"] == monitor.settings.thresholds.alert
        assert alert["details"]["level"] == "alert" and hook.headers[0]["X-Team"] == "ml"
        serve(mv, raw(WINDOW, seed=42))  # cleared: no alert, but the episode ends
        assert monitor.flush()
        serve(mv, shifted)  # crossed again: a new episode, a second alert
        assert monitor.flush()
        wait_until(lambda: len(hook.received) == 2, 10, "the second episode's alert")
        hub.close()
        monitor.close()
        assert hub.counts == {("ops", "drift", "ok_after_retry"): 1, ("ops", "drift", "ok"): 1}


def test_renotify_interval(tmp_path):
    with WebhookReceiver() as hook:
        hub = AlertHub(parse_settings({"webhooks": [{"url": hook.url}], "renotify_s": 0.2}, "test"))
        assert hub.notify("quality", "m/1/auc", 0.6, 0.7)
        assert not hub.notify("quality", "m/1/auc", 0.6, 0.7)  # same episode
        time.sleep(0.25)
        assert hub.notify("quality", "m/1/auc", 0.55, 0.7)  # still crossed after renotify_s: reminded
        wait_until(lambda: len(hook.received) == 2, 10, "two alerts")
        hub.close()


def test_settings_errors(tmp_path):
    for doc, msg in [({"webhooks": [{"url": "ftp://x"}]}, "http://"), ({"commands": [{"argv": "ls"}]}, "argv"),
                     ({}, "no webhooks"), ({"hooks": []}, "unknown keys")]:
        with pytest.raises(ValueError, match=msg):
            parse_settings(doc, "f")
    toml = tmp_path / "a.toml"
    toml.write_text('renotify_s = 60\n[[commands]]\nargv = ["true"]\n')
    assert load_settings(toml).commands[0].argv == ("true",)


def test_server_alerts_on_canary_rollback_webhook_and_command(tmp_path):
    repo = tmp_path / "repo"
    write_versions(repo / "m", {1: add_constant_model(1.0), 2: add_constant_model(2.0)},
                   "max_batch_size: 8\nversion_policy: { all: {} }\n")
    out = tmp_path / "alert.json"
    script = f"import os, pathlib; pathlib.Path({str(out)!r}).write_text(os.environ['SKEWLESS_ALERT'] + os.environ['EXTRA'])"
    with WebhookReceiver() as hook:
        cfg = tmp_path / "alerts.json"
        cfg.write_text(json.dumps({"webhooks": [{"name": "ops", "url": hook.url}],
                                   "commands": [{"name": "page", "argv": [sys.executable, "-c", script],
                                                 "env": {"EXTRA": "!"}, "kinds": ["canary_rollback"]}]}))
        srv = ServerProcess(repo, "--alerts", str(cfg)).start()
        try:
            with grpc.insecure_channel(srv.grpc_url) as ch:
                admin = tpb_grpc.TrafficAdminStub(ch)
                admin.SetCanary(tpb.SetCanaryRequest(model="m", candidate=2, weight=0.5, stable=1))
                admin.RollbackCanary(tpb.ModelRef(model="m"))
            wait_until(lambda: len(hook.of_kind("canary_rollback")) == 1 and out.exists(), 10, "the rollback alert")
            alert = json.loads(out.read_text()[:-1])
            assert out.read_text().endswith("!") and alert["subject"] == "m" and alert["details"]["candidate"] == 2

            def calls() -> dict:
                text = urllib.request.urlopen(f"{srv.http_url}/metrics", timeout=10).read().decode()
                return {(s.labels["hook"], s.labels["outcome"]): s.value for f in text_string_to_metric_families(text)
                        for s in f.samples if s.name == "skewless_alerts_total"}
            wait_until(lambda: calls() == {("ops", "ok"): 1, ("page", "ok"): 1}, 10, "both calls counted")
        finally:
            srv.stop()


def test_quality_breach_alerts_once_per_episode():
    """Lineage's live-quality breaches reach the hooks: raised once, cleared, raised again on a new episode."""
    from skewless.server.lineage.quality import QualityMonitor

    with WebhookReceiver() as hook:
        hub = AlertHub(parse_settings({"webhooks": [{"url": hook.url, "kinds": ["quality"]}], "renotify_s": 0},
                                      "test"))
        mon = QualityMonitor((3600.0,))
        mon.configure("m", "classification", {"accuracy": 0.9})
        hub.attach_quality(mon)
        for i in range(20):
            mon.add("m", 3, 0.9, float(i % 2), 1.0)  # half wrong
        mon.check()
        mon.check()
        for _ in range(400):
            mon.add("m", 3, 0.9, 1.0, 1.0)  # right again: accuracy back above 0.9, the episode ends
        mon.check()
        for _ in range(2000):
            mon.add("m", 3, 0.9, 0.0, 1.0)
        mon.check()
        wait_until(lambda: len(hook.received) == 2, 10, "two quality alerts")
        hub.close()
        first = hook.received[0]
        assert first["kind"] == "quality" and first["subject"] == "m/3/accuracy/3600s"
        assert first["value"] == pytest.approx(0.5) and first["threshold"] == 0.9
        assert first["details"]["metric"] == "accuracy" and first["details"]["version"] == 3

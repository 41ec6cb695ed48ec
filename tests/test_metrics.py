"""/metrics on the metrics port: Triton's names and labels, values equal to ModelStatistics for a known
traffic mix, skewless_* histograms, Prometheus' own parser and linter, a real Prometheus scraping it, and
OTLP export to a real in-test OTLP receiver.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from concurrent import futures as cf
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import EXAMPLE_MODELS, RPC_TIMEOUT, infer_input, wait_until
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from skewless.benchmarks.otlp_sink import OtlpSink

TRITON_COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                   "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                   "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
                   "nv_inference_compute_output_duration_us")
# What promtool's linter says of Triton's own names (Triton's exposition draws the same); ours must be clean.
TRITON_LINT = ('counter metrics should have "_total" suffix', "metric names should not contain abbreviated units",
               'non-histogram and non-summary metrics should not have "_count" suffix')


def scrape(server) -> str:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return resp.read().decode()


def families(text: str) -> dict[str, dict]:
    """name -> family, with ``values``: {(sample name, sorted labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        fam.values = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
        out[fam.name] = fam
    return out


def value(fams: dict, family: str, sample: str | None = None, **labels: str) -> float:
    fam = fams[family]
    sample = sample or (family + "_total" if fam.type == "counter" else family)
    return fam.values[(sample, tuple(sorted(labels.items())))]


def mlp_request(client, rows: int, seed: int) -> None:
    x = np.random.default_rng(seed).random((rows, 32), dtype=np.float32)
    client.infer("mlp", [infer_input("input", x)], client_timeout=RPC_TIMEOUT)


@pytest.fixture
def mix_repo(make_repo) -> Path:
    """The example MLP, and the slow model with a queue of one so that a burst is partly rejected."""
    repo = make_repo("mlp", "slow")
    cfg = repo / "slow" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "dynamic_batching { default_queue_policy { max_queue_size: 1 } }\n")
    return repo


def test_counters_equal_what_was_sent_and_model_statistics(mix_repo, start_server):
    server = start_server(mix_repo)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    rows = [1, 4, 2, 8, 1, 3]
    for i, n in enumerate(rows):
        mlp_request(client, n, i)
    invalid = 3
    for _ in range(invalid):  # wrong shape: refused by validation, a failure of reason OTHER
        with pytest.raises(InferenceServerException, match="unexpected shape"):
            client.infer("mlp", [infer_input("input", np.zeros((1, 31), np.float32))])

    # A burst at the slow model (~100 ms a batch, queue of one): one runs, one waits, the rest are refused.
    x = np.ones((1, 4), np.float32)
    with cf.ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(
            lambda _: _outcome(lambda: client.infer("slow", [infer_input("x", x)], client_timeout=RPC_TIMEOUT)),
            range(6)))
    rejected = sum("Exceeds maximum queue size" in o for o in outcomes)
    slow_ok = outcomes.count("ok")
    assert rejected >= 1 and slow_ok >= 1 and rejected + slow_ok == 6, outcomes

    fams = families(scrape(server))
    stats = {s.name: s for s in client.get_inference_statistics(as_json=False).model_stats}
    mlp, slow = {"model": "mlp", "version": "1"}, {"model": "slow", "version": "1"}
    for fam in TRITON_COUNTERS:
        assert fams[fam].type == "counter", fam
    assert fams["nv_inference_pending_request_count"].type == "gauge"

    st = stats["mlp"]
    assert value(fams, "nv_inference_request_success", **mlp) == len(rows) == st.inference_stats.success.count
    assert value(fams, "nv_inference_count", **mlp) == sum(rows) == st.inference_count
    assert value(fams, "nv_inference_exec_count", **mlp) == st.execution_count
    assert value(fams, "nv_inference_request_failure", reason="OTHER", **mlp) == invalid == st.inference_stats.fail.count
    for reason in ("REJECTED", "CANCELED", "BACKEND"):
        assert value(fams, "nv_inference_request_failure", reason=reason, **mlp) == 0
    for fam, dur in (("nv_inference_request_duration_us", st.inference_stats.success),
                     ("nv_inference_queue_duration_us", st.inference_stats.queue),
                     ("nv_inference_compute_input_duration_us", st.inference_stats.compute_input),
                     ("nv_inference_compute_infer_duration_us", st.inference_stats.compute_infer),
                     ("nv_inference_compute_output_duration_us", st.inference_stats.compute_output)):
        assert value(fams, fam, **mlp) == dur.ns // 1000, fam

    st = stats["slow"]
    assert value(fams, "nv_inference_request_failure", reason="REJECTED", **slow) == rejected
    assert value(fams, "skewless_requests_rejected", **slow) == rejected
    assert value(fams, "nv_inference_request_success", **slow) == slow_ok == st.inference_stats.success.count
    assert value(fams, "nv_inference_pending_request_count", **slow) == 0

    # Histograms: one observation per successful request (latency, queue) and per execution (compute, batch).
    hist = "skewless_request_duration_seconds"
    assert fams[hist].type == "histogram"
    assert value(fams, hist, hist + "_count", **mlp) == len(rows)
    assert value(fams, hist, hist + "_bucket", le="+Inf", **mlp) == len(rows)
    assert 0 < value(fams, hist, hist + "_sum", **mlp) == pytest.approx(
        stats["mlp"].inference_stats.success.ns / 1e9, rel=1e-9)
    assert value(fams, "skewless_batch_size", "skewless_batch_size_count", **mlp) == stats["mlp"].execution_count
    batch_rows = sum(b.batch_size * b.compute_infer.count for b in stats["mlp"].batch_stats)
    assert value(fams, "skewless_batch_size", "skewless_batch_size_sum", **mlp) == batch_rows == sum(rows)
    buckets = [(float(dict(k[1])["le"]), v) for k, v in fams[hist].values.items()
               if k[0] == hist + "_bucket" and dict(k[1])["model"] == "mlp"]
    counts = [v for _, v in sorted(buckets)]
    assert counts == sorted(counts), "bucket counts must be cumulative"
    assert value(fams, "skewless_model_events", model="mlp", event="load") == 1
    assert value(fams, "skewless_process_resident_memory_bytes") > 10e6
    assert value(fams, "skewless_process_cpu_seconds") > 0
    client.close()


def _outcome(call) -> str:
    try:
        call()
        return "ok"
    except InferenceServerException as exc:
        return str(exc)


def test_promtool_finds_only_what_it_finds_in_tritons_own_names(server, client):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed; .ci/run installs it")
    mlp_request(client, 2, 0)
    text = scrape(server)
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert done.returncode in (0, 3), f"promtool could not parse the exposition:\n{done.stdout}{done.stderr}"
    problems = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    for line in problems:
        name, _, message = line.partition(" ")
        assert name.startswith("nv_") and message in TRITON_LINT, line


def test_metrics_can_be_switched_off(make_repo, start_server):
    server = start_server(make_repo("mlp"), "--no-metrics")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10)
    assert err.value.code == 404
    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=10) as resp:
        assert resp.status == 200


# -- a real Prometheus server scraping us ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _promql(base: str, query: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as resp:
        doc = json.load(resp)
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_request_count_and_a_p99(make_repo, start_server, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus (Debian package prometheus) is not installed; .ci/run installs it")
    server = start_server(make_repo("mlp"))
    target = server.http_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                      f"  - job_name: skewless\n    static_configs:\n      - targets: ['{target}']\n")
    port = _free_port()
    prom = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        sent = 40
        for i in range(sent):
            mlp_request(client, 1, i)
        client.close()
        query = 'nv_inference_request_success{model="mlp",version="1"}'

        def scraped_all() -> bool:
            try:
                result = _promql(base, query)
            except (OSError, AssertionError):
                return False
            return bool(result) and float(result[0]["value"][1]) == sent

        wait_until(scraped_all, 30, f"Prometheus to scrape {sent} successful requests")
        p99 = _promql(base, 'histogram_quantile(0.99, sum by (le) '
                            '(skewless_request_duration_seconds_bucket{model="mlp"}))')
        assert p99 and 0 < float(p99[0]["value"][1]) < 10, p99
    finally:
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()


# -- OTLP export to a real in-test receiver ---------------------------------------------------------------
def test_otlp_export_carries_tritons_counters_and_our_histograms(make_repo, start_server, monkeypatch):
    receiver = OtlpSink()
    try:
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")
        server = start_server(make_repo("mlp"))
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for i in range(5):
            mlp_request(client, 1, i)
        client.close()

        def exported(n: int) -> bool:
            m = receiver.latest("nv_inference_request_success")
            return m is not None and any(p.as_int == n for p in m.sum.data_points)

        wait_until(lambda: exported(5), 20, "an OTLP export counting 5 successful requests")
        hist = receiver.latest("skewless_request_duration_seconds")
        assert hist is not None and hist.histogram.data_points
        point = hist.histogram.data_points[0]
        assert point.count == 5 and len(point.bucket_counts) == len(point.explicit_bounds) + 1
        labels = {kv.key: kv.value.string_value for kv in point.attributes}
        assert labels == {"model": "mlp", "version": "1"}
    finally:
        receiver.stop()


def test_a_dead_otlp_collector_never_slows_a_request(make_repo, start_server, monkeypatch):
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{_free_port()}")  # nobody listens
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
    server = start_server(make_repo("mlp"))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    started = time.monotonic()
    for i in range(50):
        mlp_request(client, 1, i)
    assert time.monotonic() - started < 10  # the exporter's retries run on its own thread
    assert "nv_inference_request_success" in scrape(server)
    client.close()


def test_drift_gauges_single_out_the_shifted_feature(tmp_path, start_server):
    """Served churn rows with one feature shifted: its PSI gauge on /metrics alerts, an unshifted one does not."""
    from test_features_serving import RAW, infer_inputs

    from skewless.examples.generate import churn_dataset

    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE_MODELS / "churn", repo / "churn")
    cfg = repo / "churn" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
        for k, v in (("skewless.drift_window_rows", "1000"), ("skewless.drift_interval_s", "0.2"),
                     ("skewless.drift_max_rows_per_s", "100000"),
                     ("skewless.drift_max_batches_per_s", "100000"))))
    server = start_server(repo)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    rows = {k: v for k, v in churn_dataset(1200, seed=5).items() if k in RAW}
    rows["monthly_charges"] = rows["monthly_charges"] * 3 + 200  # far outside the training range
    for start in range(0, 1200, 50):
        client.infer("churn", infer_inputs(rows, np.arange(start, start + 50)), client_timeout=RPC_TIMEOUT)
    client.close()
    labels = {"model": "churn", "version": "1"}

    def psi(feature: str) -> float | None:
        fams = families(scrape(server))
        fam = fams.get("skewless_feature_drift_psi")
        return None if fam is None else fam.values.get(
            ("skewless_feature_drift_psi", tuple(sorted({**labels, "feature": feature}.items()))))

    wait_until(lambda: (psi("monthly_charges") or 0) > 0.25, 20, "the shifted feature's PSI to pass 0.25")
    assert psi("tenure_months") is not None and psi("tenure_months") < 0.1

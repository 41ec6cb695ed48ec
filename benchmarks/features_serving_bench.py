"""The serving path of the feature core: its added cost per row, and served-vs-offline parity.

Cost (in-process, the server's own code): 64 one-row requests are serialized as a client would send them,
parsed and decoded by the data plane (``parse_infer_request`` + ``decode_inputs`` + the feature stage's
``admit``), then ``ModelVersion.run_batch`` runs them as one batch. ``run_batch`` reports the time of its
input stage (Triton's compute_input): for the ``churn`` example that is the merge of the raw columns plus the
kernel; for the same ONNX model served without ``features.json`` (clients send the ``dense`` and ``ids``
tensors) it is the plain ``np.concatenate`` of the tensors. The difference per row is what the feature
transform adds. Also reported: the kernel alone, BYTES columns given as str objects instead of wire bytes,
and the worker-thread cost of logging every request.

Parity (end to end): a real ``skewless serve`` subprocess with the feature log at rate 1 gets every row of a
synthetic table (plus edge cases) in random batches from concurrent clients; after a graceful stop,
``skew_check`` recomputes the log offline and counts mismatching values (must be 0).

    python benchmarks/features_serving_bench.py                 # writes benchmarks/results/
    python benchmarks/features_serving_bench.py --quick --out-dir /tmp/b
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
CHURN = REPO_ROOT / "examples" / "models" / "churn"
WIRE = {"float": ("FP64", np.float64), "int": ("INT64", np.int64), "bool": ("BOOL", np.bool_),
        "string": ("BYTES", object)}


def _load(model_dir: Path, config: str) -> Any:
    from skewless.server.models.config import parse_config
    from skewless.server.models.version import ModelVersion

    return ModelVersion(model_dir.name, 1, model_dir / "1", parse_config(config, "bench"), True, 64)


def _wire_requests(tensors: list[dict[str, tuple[str, np.ndarray]]]) -> list[bytes]:
    """Serialized ModelInferRequests, one per dict of name -> (datatype, array)."""
    from skewless.native.bytes_codec import encode_bytes
    from skewless.protos import grpc_service_pb2 as pb

    out = []
    for i, t in enumerate(tensors):
        req = pb.ModelInferRequest(model_name="bench", id=f"r{i}")
        for name, (dt, arr) in t.items():
            req.inputs.add(name=name, datatype=dt, shape=list(arr.shape))
            req.raw_input_contents.append(encode_bytes(arr) if dt == "BYTES" else np.ascontiguousarray(arr).tobytes())
        out.append(req.SerializeToString())
    return out


def _decode(mv: Any, messages: list[bytes]) -> list[dict[str, np.ndarray]]:
    """What the data plane hands the batcher for each message (the hooks included)."""
    from skewless.native.v2_codec import parse_infer_request
    from skewless.server.decode import decode_inputs

    feeds = []
    for data in messages:
        req = parse_infer_request(data)
        f, _ = decode_inputs(req.inputs, req.raw, mv)
        feeds.append(mv.features.admit(f, req.id) if mv.features is not None else f)
    return feeds


def _input_stage_ns(mv: Any, feeds: list[dict[str, np.ndarray]], calls: int) -> float:
    """Median of run_batch's input-stage time (merge [+ transform]) over ``calls`` runs."""
    rows = [1] * len(feeds)
    samples = []
    for _ in range(calls):
        _, times = mv.run_batch(feeds, rows, ["probabilities"])
        samples.append(times[0])
    return statistics.median(samples)


def _median_ns(fn, calls: int) -> float:
    fn()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples)


def measure_cost(batch: int, calls: int, work: Path) -> dict[str, Any]:
    from skewless.examples.generate import churn_dataset
    from skewless.native.bytes_codec import decode_bytes
    from skewless.native.spec import FeatureSpec
    from skewless.server.features.stage import WireBytes

    spec = FeatureSpec.load(CHURN / "1" / "features.json")
    data = {k: v for k, v in churn_dataset(batch, seed=1).items() if k != "churned"}
    dtype = {t.name: t.dtype for t in spec.inputs}
    raw = [{name: (WIRE[dtype[name]][0], np.asarray(col[i:i + 1], dtype=WIRE[dtype[name]][1]).reshape(1, 1))
            for name, col in data.items()} for i in range(batch)]
    offline = spec.transform(data)
    plain_tensors = [{"dense": ("FP32", offline["dense"][i:i + 1]), "ids": ("INT64", offline["ids"][i:i + 1])}
                     for i in range(batch)]

    plain_dir = work / "churn_plain"
    (plain_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(CHURN / "1" / "model.onnx", plain_dir / "1" / "model.onnx")
    base_cfg = "max_batch_size: 64\ndynamic_batching {}\ninstance_group [{ count: 1 kind: KIND_CPU }]\n"
    features_mv = _load(CHURN, base_cfg)
    plain_mv = _load(plain_dir, base_cfg)
    log_cfg = (base_cfg + f'parameters {{ key: "skewless.feature_log_rate" value {{ string_value: "1" }} }}\n'
               f'parameters {{ key: "skewless.feature_log_dir" value {{ string_value: "{work / "log"}" }} }}\n')
    logged_mv = _load(CHURN, log_cfg)
    try:
        feats = _decode(features_mv, _wire_requests(raw))
        plain = _decode(plain_mv, _wire_requests(plain_tensors))
        stage = features_mv.features
        # The fallback a first version would use: BYTES decoded to str objects (one object per value).
        objects = [type(f)({k: decode_bytes(v, v.count, True).reshape(-1, 1) if type(v) is WireBytes else v
                            for k, v in f.items()}, f.request_id, f.time_ns, f.n_rows) for f in feats]
        merged = {name: stage._merge(name, dt, feats, [1] * batch) for name, dt in stage.raw_dtypes}
        outs = spec.allocate(batch)
        ns = {
            "input_stage_features": _input_stage_ns(features_mv, feats, calls),
            "input_stage_plain": _input_stage_ns(plain_mv, plain, calls),
            "transform_batch": _median_ns(lambda: stage.transform_batch(feats), calls),
            "transform_batch_str_objects": _median_ns(lambda: stage.transform_batch(objects), calls),
            "kernel_only": _median_ns(lambda: spec.transform_into(merged, outs), calls),
            "input_stage_features_log_rate_1": _input_stage_ns(logged_mv, _decode(logged_mv, _wire_requests(raw)),
                                                               max(1, calls // 10)),
        }
        check = stage.transform_batch(feats)
        assert all(check[k].tobytes() == offline[k].tobytes() for k in offline), "batch != offline transform"
    finally:
        for mv in (features_mv, plain_mv, logged_mv):
            mv.runtime.close()
        logged_mv.features.close()
    per_row = {k: v / batch / 1e3 for k, v in ns.items()}
    return {"batch": batch, "calls": calls, "ns_per_batch": ns, "us_per_row": per_row,
            "added_us_per_row": (ns["input_stage_features"] - ns["input_stage_plain"]) / batch / 1e3}


def measure_parity(n_rows: int, clients: int, work: Path, seed: int = 7) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    from skewless.benchmarks.servers import start_skewless
    from skewless.examples.generate import churn_dataset
    from skewless.native.skew import skew_check
    from skewless.native.spec import FeatureSpec

    repo, log_dir = work / "repo", work / "feature_log"
    shutil.copytree(CHURN, repo / "churn")
    cfg = (repo / "churn" / "config.pbtxt").read_text()
    cfg += (f'parameters {{ key: "skewless.feature_log_rate" value {{ string_value: "1" }} }}\n'
            f'parameters {{ key: "skewless.feature_log_dir" value {{ string_value: "{log_dir}" }} }}\n')
    (repo / "churn" / "config.pbtxt").write_text(cfg)
    spec = FeatureSpec.load(repo / "churn" / "1" / "features.json")
    data = {k: v for k, v in churn_dataset(n_rows, seed=seed).items() if k != "churned"}
    edges = {"tenure_months": [np.nan, -0.0, np.inf, 5e-324], "monthly_charges": [-2.0, 1e300, np.nan, -0.0],
             "support_calls": [2**62, -1, 0, 99], "senior": [True, False, True, False],
             "contract": ["", b"\xff", "unknown", "two-year"], "payment_method": ["é", "", b"\x00", "x" * 99],
             "region": ["", "日本", b"\xfe", "region-07"]}
    for k, v in edges.items():
        data[k] = np.concatenate([data[k], np.array(v, dtype=data[k].dtype)])
    n = len(data["region"])
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    cuts = [0]
    while cuts[-1] < n:
        cuts.append(min(n, cuts[-1] + int(rng.choice([1, 1, 1, int(rng.integers(2, 65))]))))
    requests = [order[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    dtype = {t.name: t.dtype for t in spec.inputs}
    local = threading.local()

    t0 = time.perf_counter()
    with start_skewless(repo, log_path=work / "server.log") as server:
        def send(i: int) -> None:
            if not hasattr(local, "c"):
                local.c = grpcclient.InferenceServerClient(server.target)
            inputs = []
            for name, col in data.items():
                arr = col[requests[i]].reshape(-1, 1)
                inp = grpcclient.InferInput(name, list(arr.shape), WIRE[dtype[name]][0])
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            local.c.infer("churn", inputs, request_id=f"req-{i}")

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(send, range(len(requests))))
        send_s = time.perf_counter() - t0
        rc = server.stop()  # SIGTERM: the server unloads the model, which flushes and closes the log
    report = skew_check(spec, log_dir)
    return {"rows_sent": n, "requests": len(requests), "clients": clients, "server_exit": rc,
            "rows_compared": report.rows, "mismatched_rows": report.mismatched_rows,
            "mismatched_values": report.mismatched_values, "per_feature": report.per_feature,
            "log_files": len(list(log_dir.rglob("*.parquet"))), "send_seconds": round(send_s, 3),
            "ok": report.ok and report.rows == n}


def table(results: dict[str, Any]) -> str:
    lines = []
    if results.get("quick"):
        lines.append("QUICK RUN: numbers are not measurements")
    c = results["cost"]
    lines.append(f"serving path at batch {c['batch']} (median of {c['calls']} calls), us per row:")
    for k, v in c["us_per_row"].items():
        lines.append(f"  {k:<34} {v:8.3f}")
    lines.append(f"  {'added by the feature transform':<34} {c['added_us_per_row']:8.3f}   (target < 5)")
    p = results["parity"]
    lines.append(f"served-vs-offline parity: {p['rows_compared']} rows compared ({p['rows_sent']} sent in "
                 f"{p['requests']} requests from {p['clients']} clients), {p['mismatched_values']} mismatching "
                 f"values, {p['log_files']} log files: {'OK' if p['ok'] else 'FAILED'}")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_row = results["cost"]["us_per_row"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(list(per_row), list(per_row.values()))
    ax.set_xlabel(f"us per row at batch {results['cost']['batch']}")
    ax.set_title(f"Feature serving path; parity: {results['parity']['rows_compared']} rows, "
                 f"{results['parity']['mismatched_values']} mismatches")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="one-row requests per batch")
    p.add_argument("--calls", type=int, default=3000, help="timed batches per measurement (median)")
    p.add_argument("--parity-rows", type=int, default=20000, help="rows sent through the server")
    p.add_argument("--clients", type=int, default=8, help="concurrent client threads for the parity run")
    p.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    p.add_argument("--quick", action="store_true", help="a few calls and rows: proves it runs, no more")
    args = p.parse_args(argv)
    calls, rows = (30, 300) if args.quick else (args.calls, args.parity_rows)
    with tempfile.TemporaryDirectory(prefix="skewless-fsb-") as tmp:
        results = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                               "platform": platform.platform()},
                   "cost": measure_cost(args.batch, calls, Path(tmp) / "cost"),
                   "parity": measure_parity(rows, args.clients, Path(tmp) / "parity")}
    if args.quick:
        results["quick"] = True
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "features_serving_bench.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    (out / "features_serving_bench.txt").write_text(text + "\n")
    plot(results, out / "features_serving_bench.png")
    print(text)
    print(f"wrote {out / 'features_serving_bench.json'}, .txt and .png", file=sys.stderr)
    return 0 if results["parity"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

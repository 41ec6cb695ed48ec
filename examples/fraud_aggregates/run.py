#!/usr/bin/env python3
"""Windowed aggregate features (card, merchant and device counts, sums, means and distinct counts over
10 minutes, 1 hour and 24 hours) from a backfill to a server, with the same bytes online as offline.

From a fresh clone::

    python3 -m venv .venv && . .venv/bin/activate
    pip install -e ".[cpu,features,export,client,redis]" pandas
    python examples/fraud_aggregates/run.py              # 1,000,000 events fitted, 20,000 replayed

What it does:

1. makes seeded card transactions in time order (heavy-tailed card activity, home devices, fraud bursts of
   many quick transactions on new devices; 2% of amounts missing) and splits them in time: the first
   ``--events`` are history, the next ``--held-out`` the stream to replay;
2. ``skewless fit`` with ``examples/configs/fraud_aggregates.json`` (the aggregates are backfilled over the
   history: every row gets what the server would have computed when it arrived), ``skewless transform``,
   a LogisticRegression, ``skewless export``, plus an identity model over the same spec whose outputs are the
   served feature tensor itself;
3. ``skewless serve`` (state in process), the history recorded through the ingest RPC
   (``FeatureClient.ingest``), then the held-out stream replayed through scoring over gRPC one time bucket
   after the other, each bucket's rows split over concurrent requests (their interleaving within a bucket
   cannot change a value), and every served feature tensor compared with the backfill of history + stream,
   bit for bit (the model's scores to 1e-6: onnxruntime's kernels round the last bits by batch size);
4. the same with the state in Redis (``redis-server`` started here) shared by ``--workers 2``, over REST.

Exit status: 0 when every served feature tensor equals the backfill (and the scores are within 1e-6), 1 on
any mismatch, 2 on an error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from skewless.examples.fraud.run import (
    ExampleError,
    cli,
    compare,
    run_in_workdir,
    say,
    serving,
    wait_model_ready,
)

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "configs" / "fraud_aggregates.json"
MODEL, FEATURES_MODEL = "fraud_agg", "fraud_agg_features"
LABEL = "is_fraud"
EXIT_OK, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2
EXTRAS_HINT = 'pip install -e ".[cpu,features,export,client,redis]" pandas'
DAY_MS = 24 * 3600 * 1000
CATEGORIES = ["grocery", "fuel", "restaurant", "pharmacy", "apparel", "electronics", "travel", "hotel",
              "digital_goods", "gaming", "gift_cards", "jewelry", "crypto_exchange", "money_transfer",
              "utilities", "telecom", "subscription", "marketplace"]


# ---- 1. the data ------------------------------------------------------------------------------------------

def make_events(n: int, seed: int) -> Any:
    """``n`` seeded transactions in time order (ms since the epoch), as a pyarrow Table."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    n_cards, n_merchants = max(200, n // 25), max(50, n // 400)
    span = max(DAY_MS, int(n / 1_000_000 * 10 * DAY_MS))  # about 100,000 transactions a day
    t0 = 1_767_225_600_000  # 2026-01-01
    # Ordinary traffic: card activity is heavy-tailed, most payments from the card's home device.
    base = int(n * 0.97)
    card = np.minimum((rng.pareto(1.1, base) * n_cards / 30).astype(np.int64), n_cards - 1)
    ts = t0 + rng.integers(0, span, base)
    device = np.where(rng.random(base) < 0.92, card * 3 + 1, rng.integers(0, n_cards * 3, base))
    merchant = np.minimum((rng.pareto(1.3, base) * n_merchants / 20).astype(np.int64), n_merchants - 1)
    amount = np.round(rng.lognormal(3.4, 1.0, base), 2)
    fraud = rng.random(base) < 0.002
    # Fraud bursts: a compromised card pays many times within an hour, on new devices, larger amounts.
    bursts = n - base
    burst_cards = rng.integers(0, n_cards, max(1, bursts // 12))
    which = rng.integers(0, len(burst_cards), bursts)
    start = t0 + rng.integers(0, span, len(burst_cards))
    b_ts = start[which] + rng.integers(0, 3600 * 1000, bursts)
    b_card = burst_cards[which]
    b_device = rng.integers(n_cards * 3, n_cards * 4, len(burst_cards))[which]
    b_merchant = rng.integers(0, n_merchants, bursts)
    b_amount = np.round(rng.lognormal(4.6, 0.8, bursts), 2)
    ts = np.concatenate([ts, b_ts])
    order = np.argsort(ts, kind="stable")
    card = np.concatenate([card, b_card])[order]
    device = np.concatenate([device, b_device])[order]
    merchant = np.concatenate([merchant, b_merchant])[order]
    amount = np.concatenate([amount, b_amount])[order]
    amount[rng.random(n) < 0.02] = np.nan
    label = np.concatenate([fraud, rng.random(bursts) < 0.8])[order].astype(np.int64)
    category = np.array(CATEGORIES)[merchant % len(CATEGORIES)]
    return pa.table({
        "ts": pa.array(ts[order], pa.int64()),
        "card_id": pa.array(np.char.add("card-", card.astype(str))),
        "device_id": pa.array(np.char.add("dev-", device.astype(str))),
        "merchant_id": pa.array(np.char.add("m-", merchant.astype(str))),
        "merchant_category": pa.array(category),
        "amount": pa.array(amount, pa.float64(), from_pandas=True),
        LABEL: pa.array(label),
    })


# ---- 2. fit, train, export --------------------------------------------------------------------------------

def train(features: Path) -> Any:
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression

    table = pq.read_table(features)
    x = np.stack(table.column("dense").to_numpy(zero_copy_only=False)).astype(np.float32)
    y = table.column(LABEL).to_numpy()
    say(f"training LogisticRegression on {x.shape[0]:,} rows x {x.shape[1]} columns ...")
    return LogisticRegression(max_iter=1000).fit(x, y)


def identity_model(spec_path: Path, out: Path, max_batch_size: int) -> None:
    """A model whose output is its input: serving it shows the feature tensor the server computed."""
    import onnx
    from onnx import TensorProto, helper

    from skewless.native.spec import FeatureSpec

    spec = FeatureSpec.load(spec_path)
    (tensor,) = spec.outputs
    graph = helper.make_graph(
        [helper.make_node("Identity", [tensor.name], ["features"])], "identity",
        [helper.make_tensor_value_info(tensor.name, TensorProto.FLOAT, [None, tensor.width])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, tensor.width])])
    version = out / "1"
    version.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8),
              version / "model.onnx")
    shutil.copy(spec_path, version / "features.json")
    (out / "config.pbtxt").write_text(f'name: "{out.name}"\nbackend: "onnxruntime"\n'
                                      f"max_batch_size: {max_batch_size}\ndynamic_batching {{ }}\n")


# ---- 3. serve, ingest, replay -----------------------------------------------------------------------------

def finest_bucket(spec_path: Path) -> int:
    from skewless.native.spec import FeatureSpec

    return min(int(a["bucket"]) for a in FeatureSpec.load(spec_path).aggregates)


def replay(client: Any, models: Sequence[str], held: Any, bucket: int, concurrency: int,
           progress: bool) -> dict[str, dict[str, np.ndarray]]:
    """Score ``held`` bucket after bucket (a bucket's rows only once every earlier bucket is recorded), each
    bucket's rows dealt round-robin over ``concurrency`` concurrent requests; outputs back in row order."""
    ts = held.column("ts").to_numpy()
    ids = ts // bucket
    edges = np.flatnonzero(np.diff(ids)) + 1
    spans = list(zip(np.r_[0, edges], np.r_[edges, len(ts)], strict=True))
    out: dict[str, dict[str, list]] = {m: {} for m in models}
    pieces: dict[str, list[tuple[np.ndarray, dict[str, np.ndarray]]]] = {m: [] for m in models}
    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency * len(models)) as pool:
        for k, (a, b) in enumerate(spans):
            jobs = []
            for m in models:
                for j in range(min(concurrency, b - a)):
                    rows = np.arange(a + j, b, concurrency)
                    jobs.append((m, rows, pool.submit(client.predict, m, held.take(rows), max_rows=len(rows))))
            for m, rows, fut in jobs:
                pieces[m].append((rows, dict(fut.result().outputs)))
            if progress and (k % 200 == 0 or k == len(spans) - 1):
                say(f"  bucket {k + 1:,}/{len(spans):,}  rows {b:,}/{len(ts):,}  {time.monotonic() - t0:.1f}s")
    for m in models:
        names = pieces[m][0][1].keys()
        for name in names:
            first = pieces[m][0][1][name]
            arr = np.empty((len(ts), *first.shape[1:]), first.dtype)
            for rows, outs in pieces[m]:
                arr[rows] = outs[name]
            out[m][name] = arr
    return out


def serve_and_check(label: str, repo: Path, extra: Sequence[str], protocol: str, history: Any, held: Any,
                    expected: dict[str, dict[str, np.ndarray]], args: argparse.Namespace,
                    bucket: int) -> dict[str, Any]:
    from skewless.client import FeatureClient

    models = [FEATURES_MODEL, MODEL]
    with serving(repo, args.start_timeout, extra) as server:
        for m in models:
            wait_model_ready(server.grpc_url, args.start_timeout, m)
        url = server.grpc_url if protocol == "grpc" else server.rest_url
        with FeatureClient(url, protocol) as client:
            t0 = time.monotonic()
            say(f"[{label}] recording {history.num_rows:,} history events through the ingest RPC ({protocol}) ...")
            with ThreadPoolExecutor(len(models)) as pool:
                receipts = list(pool.map(lambda m: client.ingest(m, history, max_rows=args.ingest_rows), models))
            ingest_s = time.monotonic() - t0
            say(f"[{label}] ingested in {ingest_s:.1f}s: {receipts[0]}")
            t0 = time.monotonic()
            say(f"[{label}] replaying {held.num_rows:,} rows bucket by bucket ({bucket} ms buckets, "
                f"{args.concurrency} concurrent requests per bucket) ...")
            served = replay(client, models, held, bucket, args.concurrency, args.progress)
            replay_s = time.monotonic() - t0
    result: dict[str, Any] = {"ingest_seconds": round(ingest_s, 2), "replay_seconds": round(replay_s, 2),
                              "recorded": receipts[0].recorded, "late": receipts[0].late}
    equal = compare(served[FEATURES_MODEL], expected[FEATURES_MODEL])
    result["features"] = {"rows": int(equal.size), "equal": int(equal.sum()), "mismatch": int((~equal).sum())}
    say(f"[{label}] served feature tensors: {equal.sum():,} rows equal to the backfill bit for bit, "
        f"{(~equal).sum():,} mismatching")
    # The scores: onnxruntime's matrix kernels round the last bits differently for a 1-row run than for a
    # many-row run, and the server's batches are whatever arrived together, so scores are compared to 1e-6.
    p_got, p_want = served[MODEL]["probabilities"], expected[MODEL]["probabilities"]
    diff = float(np.abs(p_got.astype(np.float64) - p_want).max())
    labels_equal = int((served[MODEL]["label"].reshape(-1) == expected[MODEL]["label"].reshape(-1)).sum())
    result["scores"] = {"rows": int(len(p_got)), "max_abs_diff": diff, "labels_equal": labels_equal,
                        "within_1e-6": bool(diff <= 1e-6)}
    say(f"[{label}] scores: max |served - offline| = {diff:.2e}, {labels_equal:,} of {len(p_got):,} labels equal")
    return result


# ---- the journey ------------------------------------------------------------------------------------------

def run(args: argparse.Namespace, work: Path) -> int:
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skewless.native.spec import FeatureSpec

    total = args.events + args.held_out
    say(f"making {total:,} transactions (seed {args.seed}) ...")
    table = make_events(total, args.seed)
    history, held = table.slice(0, args.events), table.slice(args.events)
    pq.write_table(history, work / "history.parquet")
    pq.write_table(held, work / "stream.parquet")
    spec_path = work / "features.json"
    progress = [] if args.progress else ["--no-progress"]
    cli("fit", "--config", str(args.config), "--data", str(work / "history.parquet"), "--out", str(spec_path))
    cli("transform", "--spec", str(spec_path), "--data", str(work / "history.parquet"),
        "--out", str(work / "history_features.parquet"), "--keep", LABEL, *progress)
    import joblib

    joblib.dump(train(work / "history_features.parquet"), work / "model.joblib")
    repo = work / "models"
    cli("export", "--estimator", str(work / "model.joblib"), "--spec", str(spec_path),
        "--data", str(work / "stream.parquet"), "--out", str(repo / MODEL), "--max-batch-size", "256", "--force")
    identity_model(spec_path, repo / FEATURES_MODEL, 256)

    say("the offline answer: backfill of history + stream in time order, then onnxruntime ...")
    spec = FeatureSpec.load(spec_path)
    t0 = time.monotonic()
    tensors = spec.transform(pa.concat_tables([history, held]))
    backfill_s = time.monotonic() - t0
    dense = tensors["dense"][args.events:]
    sess = ort.InferenceSession(str(repo / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    scores = dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: dense}), strict=True))
    expected = {FEATURES_MODEL: {"features": dense}, MODEL: scores}
    say(f"backfilled {total:,} rows in {backfill_s:.1f}s ({total / backfill_s:,.0f} rows/s)")
    bucket = finest_bucket(spec_path)

    summary: dict[str, Any] = {"events": args.events, "held_out": args.held_out, "fraud_rate":
                               float(np.mean(table.column(LABEL).to_numpy())),
                               "backfill_rows_per_s": round(total / backfill_s)}
    summary["in_process"] = serve_and_check("in-process", repo, [], "grpc", history, held, expected, args, bucket)
    if args.redis:
        from skewless.benchmarks.servers import RedisUnavailable, local_redis

        try:
            with local_redis() as url:
                summary["redis_two_workers"] = serve_and_check(
                    "redis, 2 workers", repo, ["--workers", "2", "--aggregate-store", url], "http", history, held,
                    expected, args, bucket)
        except RedisUnavailable as exc:
            raise ExampleError(f"{exc}; --no-redis skips this part") from None
    runs = [r for r in summary.values() if isinstance(r, dict)]
    mismatches = sum(r["features"]["mismatch"] for r in runs)
    summary["mismatching_rows"] = mismatches
    scores_ok = all(r["scores"]["within_1e-6"] for r in runs)
    say(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return EXIT_OK if mismatches == 0 and scores_ok else EXIT_MISMATCH


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=f"Needs: {EXTRAS_HINT}, and redis-server for the Redis part.")
    p.add_argument("--events", type=int, default=1_000_000, help="history events fitted and ingested")
    p.add_argument("--held-out", type=int, default=20_000, help="events replayed through scoring")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--workdir", type=Path, default=None, help="keep the data, spec and models here")
    p.add_argument("--concurrency", type=int, default=4, help="concurrent requests per time bucket")
    p.add_argument("--ingest-rows", type=int, default=50_000, help="events per ingest request")
    p.add_argument("--no-redis", dest="redis", action="store_false", help="skip the Redis + 2 workers part")
    p.add_argument("--start-timeout", type=float, default=90.0)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the summary as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.events < 100 or args.held_out < 10 or args.concurrency < 1 or args.ingest_rows < 1:
        p.error("--events >= 100, --held-out >= 10, --concurrency >= 1, --ingest-rows >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_in_workdir(run, parse_args(argv), "skewless-fraud-agg-")


if __name__ == "__main__":
    sys.exit(main())

"""Windowed aggregates: backfill rows/s of ``skewless transform`` beside pandas, and the engine's cost per row.

The data: N synthetic card transactions in time order (ms timestamps, ties included), with card, merchant
and device ids and an amount. The spec: card, merchant and device aggregates over 10 m, 1 h and 24 h
(``AGGREGATES``), written as plain float64 values so that nothing but the aggregates is measured.

- **backfill**: ``skewless transform`` of the Parquet file (streamed, one state across batches), wall time
  of the whole command, as a user runs it;
- **pandas**: ``groupby(key).rolling(window, on=time, closed="left")`` over the same DataFrame for every
  aggregate pandas can roll (distinct counts cannot be rolled: they are left out, and said so in the JSON).
  pandas' windows slide over exact times and ours move by buckets, so the values differ by design; this
  compares the work, not the numbers;
- **engine**: ``AggregateState.score`` on batches of 1, 16 and 256 rows, microseconds per row per
  aggregate (median over many calls), the cost the server adds per aggregate.
- **redis**: the same through the Redis store (``--aggregate-store``: one MULTI/EXEC round trip per batch,
  then the engine over the prior read), against a ``redis-server`` this script starts on 127.0.0.1 (or
  ``--redis URL``; ``--redis off`` leaves it out). A local Redis: the network of a real deployment adds its
  round-trip time per batch.

    python -m skewless.benchmarks.aggregates_bench              # 1M events, writes benchmarks/results/
    python -m skewless.benchmarks.aggregates_bench --rows 200000 --out-dir /tmp/bench
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .servers import local_redis

PANDAS_WINDOWS = {"10m": "10min", "1h": "1h", "24h": "24h"}  # pandas reads "10m" as ten months
# (name, op, key, value, window): card, merchant and device aggregates over 10 m / 1 h / 24 h.
AGGREGATES = [
    ("card_txn_10m", "count", "card_id", None, "10m"),
    ("card_txn_1h", "count", "card_id", None, "1h"),
    ("card_amount_sum_1h", "sum", "card_id", "amount", "1h"),
    ("card_amount_mean_24h", "mean", "card_id", "amount", "24h"),
    ("card_amount_max_24h", "max", "card_id", "amount", "24h"),
    ("card_merchants_24h", "distinct", "card_id", "merchant_id", "24h"),
    ("merchant_txn_1h", "count", "merchant_id", None, "1h"),
    ("merchant_amount_mean_24h", "mean", "merchant_id", "amount", "24h"),
    ("device_txn_10m", "count", "device_id", None, "10m"),
    ("device_cards_24h", "distinct", "device_id", "card_id", "24h"),
]
BATCHES = (1, 16, 256)


def make_events(n: int, seed: int = 0) -> pa.Table:
    """n transactions over about n / 20 seconds... spread over at least two days, in time order."""
    rng = np.random.default_rng(seed)
    span = max(2 * 86_400_000, n * 200)
    ts = np.sort(rng.integers(0, span, n)) + 1_700_000_000_000
    return pa.table({
        "ts": pa.array(ts, pa.int64()),
        "card_id": pa.array([f"card-{i}" for i in rng.integers(0, max(10, n // 40), n)]),
        "merchant_id": pa.array([f"m-{i}" for i in rng.integers(0, max(5, n // 2000), n)]),
        "device_id": pa.array([f"d-{i}" for i in rng.integers(0, max(10, n // 30), n)]),
        "amount": pa.array(np.round(rng.lognormal(3, 1, n), 2)),
    })


def config() -> dict[str, Any]:
    feats = []
    for name, op, key, value, window in AGGREGATES:
        f = {"name": name, "kind": "aggregate", "op": op, "keys": key, "time": "ts", "window": window}
        if value is not None:
            f["value"] = value
        feats.append(f)
    return {"outputs": {"dense": "float64"}, "features": feats}


def run_cli(*argv: str) -> int:
    from skewless.native.cli import register

    parser = argparse.ArgumentParser(prog="skewless")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def time_backfill(spec_path: Path, data: Path, out: Path, batch_rows: int) -> float:
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        rc = run_cli("transform", "--spec", str(spec_path), "--data", str(data), "--out", str(out),
                     "--batch-rows", str(batch_rows), "--no-progress")
    if rc != 0:
        raise RuntimeError(f"skewless transform exited with {rc}")
    return time.perf_counter() - t0


def time_pandas(table: pa.Table) -> tuple[float, list[str]]:
    """Seconds for every rollable aggregate, one groupby-rolling each (the usual pandas backfill)."""
    import pandas as pd

    df = table.to_pandas()
    df["when"] = pd.to_datetime(df["ts"], unit="ms")
    done = []
    t0 = time.perf_counter()
    for name, op, key, value, window in AGGREGATES:
        if op == "distinct":
            continue  # pandas cannot roll a distinct count
        col = value or "amount"
        rolled = df.groupby(key).rolling(PANDAS_WINDOWS[window], on="when", closed="left")[col]
        {"count": rolled.count, "sum": rolled.sum, "mean": rolled.mean, "max": rolled.max}[op]()
        done.append(name)
    return time.perf_counter() - t0, done


def engine_cost(spec: Any, table: pa.Table, batch: int, budget_s: float, min_calls: int,
                state: Any = None) -> float:
    """Median microseconds per row per aggregate of ``state.score`` (default: a new in-process
    AggregateState) on batches of ``batch`` rows."""
    from skewless.native.columns import column

    dtypes = {t.name: t.dtype for t in spec.inputs}
    n = table.num_rows
    starts = list(range(0, n - batch + 1, batch)) or [0]
    chunks = []
    for s in starts[:2000]:
        part = table.slice(s, batch)
        chunks.append({c: column(c, part.column(c), dtypes[c]) for c in dtypes})
    state = spec.new_aggregate_state() if state is None else state
    times = []
    deadline = time.perf_counter() + budget_s
    i = 0
    while len(times) < min_calls or time.perf_counter() < deadline:
        cols = chunks[i % len(chunks)]
        t0 = time.perf_counter()
        state.score(cols, batch)
        times.append(time.perf_counter() - t0)
        i += 1
        if len(times) >= 50 * min_calls:
            break
    return statistics.median(times) / (batch * len(AGGREGATES)) * 1e6


def redis_costs(spec: Any, table: pa.Table, budget_s: float, min_calls: int, url: str) -> dict[str, float]:
    """engine_cost through the Redis store at ``url``, each batch size in a namespace of its own."""
    from skewless.server.features.aggregate_redis import RedisAggregateStore

    out = {}
    for b in BATCHES:
        store = RedisAggregateStore(url, f"bench-{os.getpid()}-{b}", spec.new_aggregate_state)
        try:
            out[str(b)] = engine_cost(spec, table, b, budget_s, min_calls, state=store)
        finally:
            store.close()
    return out


def run(rows: int, budget_s: float, min_calls: int, batch_rows: int, redis_url: str = "auto") -> dict[str, Any]:
    from skewless.native.fit import fit

    table = make_events(rows, seed=1)
    results: dict[str, Any] = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "rows": rows, "aggregates": [a[0] for a in AGGREGATES],
    }
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pq.write_table(table, d / "events.parquet", row_group_size=1 << 16)
        spec = fit(config(), table.slice(0, min(rows, 20_000)))
        spec.save(d / "features.json")
        print("  fitted", file=sys.stderr)
        seconds = time_backfill(d / "features.json", d / "events.parquet", d / "out.npy", batch_rows)
    results["backfill"] = {"seconds": seconds, "rows_per_s": rows / seconds,
                           "aggregates": len(AGGREGATES), "command": "skewless transform (streamed)"}
    print(f"  backfill {rows / seconds:,.0f} rows/s", file=sys.stderr)
    p_seconds, rolled = time_pandas(table)
    results["pandas"] = {"seconds": p_seconds, "rows_per_s": rows / p_seconds, "aggregates": len(rolled),
                         "left_out": [a[0] for a in AGGREGATES if a[0] not in rolled],
                         "method": "groupby(key).rolling(window, on=time, closed='left')"}
    print(f"  pandas {rows / p_seconds:,.0f} rows/s", file=sys.stderr)
    results["engine_us_per_row_per_aggregate"] = {
        str(b): engine_cost(spec, table, b, budget_s, min_calls) for b in BATCHES}
    if redis_url != "off":
        try:
            if redis_url == "auto":
                with local_redis() as url:
                    results["redis_us_per_row_per_aggregate"] = redis_costs(spec, table, budget_s, min_calls, url)
                results["redis"] = "a local redis-server started by the script"
            else:
                results["redis_us_per_row_per_aggregate"] = redis_costs(spec, table, budget_s, min_calls, redis_url)
                results["redis"] = redis_url
        except (ImportError, RuntimeError) as exc:  # no redis package or server: said so, not measured
            results["redis"] = f"not measured: {exc}"
            print(f"  redis store not measured: {exc}", file=sys.stderr)
    return results


def text(results: dict[str, Any]) -> str:
    lines = ["QUICK RUN: numbers are not measurements"] if results.get("quick") else []
    b, p = results["backfill"], results["pandas"]
    lines.append(f"{results['rows']:,} events, {b['aggregates']} aggregates")
    lines.append(f"  skewless transform backfill: {b['rows_per_s']:>12,.0f} rows/s ({b['seconds']:.2f} s)")
    lines.append(f"  pandas groupby-rolling:      {p['rows_per_s']:>12,.0f} rows/s ({p['seconds']:.2f} s, "
                 f"{p['aggregates']} aggregates; distinct left out)")
    for batch, us in results["engine_us_per_row_per_aggregate"].items():
        lines.append(f"  AggregateState.score, batch {batch:>4}: {us:8.3f} us per row per aggregate")
    for batch, us in results.get("redis_us_per_row_per_aggregate", {}).items():
        lines.append(f"  Redis store score,    batch {batch:>4}: {us:8.3f} us per row per aggregate")
    if "redis_us_per_row_per_aggregate" not in results and "redis" in results:
        lines.append(f"  Redis store: {results['redis']}")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    names = ["skewless transform", "pandas rolling"]
    left.bar(names, [results["backfill"]["rows_per_s"], results["pandas"]["rows_per_s"]],
             color=["tab:blue", "tab:orange"])
    left.set_ylabel("rows / s")
    left.set_title(f"Backfill, {results['rows']:,} events")
    engine = results["engine_us_per_row_per_aggregate"]
    in_redis = results.get("redis_us_per_row_per_aggregate")
    x = np.arange(len(engine))
    width = 0.4 if in_redis else 0.8
    right.bar(x - (width / 2 if in_redis else 0), list(engine.values()), width, color="tab:green",
              label="in process")
    if in_redis:
        right.bar(x + width / 2, [in_redis[b] for b in engine], width, color="tab:red", label="Redis store")
        right.legend()
    right.set_xticks(x, [f"batch {b}" for b in engine])
    right.set_yscale("log")
    right.set_ylabel("us per row per aggregate")
    right.set_title("score: cost per row per aggregate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="synthetic events")
    p.add_argument("--budget", type=float, default=2.0, help="seconds per engine measurement")
    p.add_argument("--batch-rows", type=int, default=1 << 16, help="skewless transform --batch-rows")
    p.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    p.add_argument("--quick", action="store_true", help="a few calls per measurement: proves it runs, no more")
    p.add_argument("--redis", default="auto", metavar="URL",
                   help="the Redis store's measurement: auto (start a local redis-server), a redis:// URL, or off")
    args = p.parse_args(argv)
    if args.quick:
        results = run(args.rows, 0.0, 5, args.batch_rows, args.redis)
        results["quick"] = True
    else:
        results = run(args.rows, args.budget, 200, args.batch_rows, args.redis)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "aggregates_bench.json").write_text(json.dumps(results, indent=1))
    report = text(results)
    (out / "aggregates_bench.txt").write_text(report + "\n")
    plot(results, out / "aggregates_bench.png")
    print(report)
    print(f"wrote {out / 'aggregates_bench.json'}, .txt and .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rows/s of the native feature kernel vs scikit-learn's ColumnTransformer and plain pandas/NumPy.

The same features in all three: 4 numeric columns imputed (mean) and standardised, 2 categorical columns
one-hot encoded against a fitted vocabulary, 1 high-cardinality string hashed into 1024 buckets, 1 numeric
column discretised into 8 quantile bins. scikit-learn: SimpleImputer+StandardScaler, OneHotEncoder,
FeatureHasher, KBinsDiscretizer. Ours writes the hashed id as an index into an int64 tensor (what an
embedding layer consumes); FeatureHasher writes the same information as a sparse one-hot column.

Each implementation gets its natural input: scikit-learn and pandas a DataFrame; the kernel the columns
a server has after decoding a request (numpy arrays and Arrow string buffers), and, for comparison, the
same DataFrame. Batches of 1 and 64 rows are timed over many calls (median), 1M rows a few times (best).

    python benchmarks/features_bench.py                    # full run, writes benchmarks/results/
    python benchmarks/features_bench.py --rows 1000000 --out-dir /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

NUMERIC = ["n0", "n1", "n2", "n3"]
CATEGORICAL = ["cat_small", "cat_large"]
HASHED = "user"
BINNED = "amount"
HASH_BUCKETS = 1024
N_BINS = 8


def make_data(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {}
    for i, name in enumerate(NUMERIC):
        col = rng.normal(i, 1 + i, n)
        col[rng.random(n) < 0.05] = np.nan
        data[name] = col
    data["cat_small"] = rng.choice([f"c{i}" for i in range(8)], n).astype(object)
    data["cat_large"] = rng.choice([f"country-{i}" for i in range(60)], n).astype(object)
    data[HASHED] = np.array([f"user-{i}" for i in rng.integers(0, 100_000, n)], dtype=object)
    data[BINNED] = rng.lognormal(3, 1, n)
    return pd.DataFrame(data)


CONFIG = {
    "features": [
        *({"name": c, "impute": "mean", "scale": "standard"} for c in NUMERIC),
        *({"name": c, "kind": "vocabulary", "oov_buckets": 0, "encode": "onehot"} for c in CATEGORICAL),
        {"name": HASHED, "kind": "hash", "buckets": HASH_BUCKETS, "seed": 0},
        {"name": BINNED, "bucketize": {"quantiles": N_BINS}},
    ],
}


def build_sklearn(train: pd.DataFrame) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction import FeatureHasher
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, KBinsDiscretizer, OneHotEncoder, StandardScaler

    kbins_args: dict[str, Any] = {"n_bins": N_BINS, "encode": "ordinal", "strategy": "quantile"}
    try:
        KBinsDiscretizer(quantile_method="linear")
        kbins_args["quantile_method"] = "linear"
    except TypeError:
        pass
    ct = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler())]), NUMERIC),
        ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
        # FeatureHasher hashes each sample's iterable of strings: give it rows of one string.
        ("hash", Pipeline([("rows", FunctionTransformer(lambda x: np.asarray(x, dtype=object))),
                           ("hasher", FeatureHasher(n_features=HASH_BUCKETS, input_type="string"))]), [HASHED]),
        ("bins", KBinsDiscretizer(**kbins_args), [BINNED]),
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct.fit(train)
    return ct


class PandasBaseline:
    """The same transforms written the way a data scientist would in pandas/NumPy (vectorised)."""

    def __init__(self, train: pd.DataFrame) -> None:
        self.means = {c: float(train[c].mean()) for c in NUMERIC}
        self.stds = {c: float(train[c].fillna(self.means[c]).std(ddof=0)) or 1.0 for c in NUMERIC}
        self.cats = {c: pd.Index(sorted(train[c].unique())) for c in CATEGORICAL}
        self.bins = np.quantile(train[BINNED].to_numpy(), np.arange(1, N_BINS) / N_BINS)

    def transform(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        parts = [((df[c].fillna(self.means[c]).to_numpy() - self.means[c]) / self.stds[c])[:, None] for c in NUMERIC]
        for c in CATEGORICAL:
            codes = self.cats[c].get_indexer(df[c])
            onehot = np.zeros((len(df), len(self.cats[c])), dtype=np.float32)
            ok = codes >= 0
            onehot[np.nonzero(ok)[0], codes[ok]] = 1
            parts.append(onehot)
        dense = np.hstack(parts).astype(np.float32)
        hashed = pd.util.hash_array(df[HASHED].to_numpy()) % np.uint64(HASH_BUCKETS)
        binned = np.searchsorted(self.bins, df[BINNED].to_numpy(), side="right")
        return dense, np.stack([hashed.astype(np.int64), binned], axis=1)


def server_columns(df: pd.DataFrame) -> dict[str, Any]:
    """What the batcher holds after decoding a request: numpy numbers and Arrow string buffers."""
    cols: dict[str, Any] = {c: df[c].to_numpy() for c in [*NUMERIC, BINNED]}
    for c in [*CATEGORICAL, HASHED]:
        cols[c] = pa.array(df[c].to_numpy(), type=pa.string())
    return cols


def time_calls(fn, min_calls: int, budget_s: float) -> float:
    """Median seconds per call over at least ``min_calls`` calls or ``budget_s`` seconds."""
    fn()
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_calls or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 100 * min_calls:
            break
    return statistics.median(times)


def time_best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(n: int, spec: Any, sk: Any, pdb: PandasBaseline, threads: int, budget_s: float,
            repeats: int, min_calls: int) -> dict[str, float]:
    """Seconds per call of every implementation on one batch of ``n`` rows."""
    df = make_data(n, seed=2)
    cols = server_columns(df)
    outs = spec.allocate(n)
    if n >= 100_000:
        def timer(fn, scale=1):
            return time_best(fn, max(1, repeats - (scale > 1)))
    else:
        def timer(fn, scale=1):
            return time_calls(fn, max(1, min_calls // scale), budget_s)
    m = {
        "skewless, server columns, 1 thread": timer(lambda: spec.transform_into(cols, outs, 1)),
        f"skewless, server columns, {threads} threads": timer(lambda: spec.transform_into(cols, outs, threads)),
        "skewless, DataFrame": timer(lambda: spec.transform(df), 4),
        "pandas/numpy": timer(lambda: pdb.transform(df), 10),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m["scikit-learn ColumnTransformer"] = timer(lambda: sk.transform(df), 20)
    return m


def run(rows_large: int, budget_s: float, repeats: int, min_calls: int = 2000,
        train_rows: int = 200_000) -> dict[str, Any]:
    from skewless.native.features import fit

    train = make_data(train_rows, seed=1)
    spec = fit(CONFIG, train)
    sk = build_sklearn(train)
    pdb = PandasBaseline(train)
    threads = os.cpu_count() or 1
    results: dict[str, Any] = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(), "cores": threads},
        "spec": {"sha256": spec.sha256, "outputs": {t.name: [t.dtype, t.width] for t in spec.outputs}},
        "sizes": {},
    }
    for n in (1, 64, rows_large):
        m = measure(n, spec, sk, pdb, threads, budget_s, repeats, min_calls)
        sk_t = m["scikit-learn ColumnTransformer"]
        results["sizes"][str(n)] = {
            name: {"seconds_per_call": t, "rows_per_s": n / t, "us_per_row": t / n * 1e6,
                   "speedup_vs_sklearn": sk_t / t}
            for name, t in m.items()
        }
        print(f"  {n:>9} rows done", file=sys.stderr)
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"{'rows':>9}  {'implementation':<40} {'rows/s':>14} {'us/row':>10} {'vs sklearn':>10}"]
    if results.get("quick"):
        lines.insert(0, "QUICK RUN: numbers are not measurements")
    for n, impls in results["sizes"].items():
        for name, r in impls.items():
            lines.append(f"{n:>9}  {name:<40} {r['rows_per_s']:>14,.0f} {r['us_per_row']:>10.3f} "
                         f"{r['speedup_vs_sklearn']:>9.1f}x")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results["sizes"])
    names = list(next(iter(results["sizes"].values())))
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [results["sizes"][s].get(name, {}).get("rows_per_s", 0) for s in sizes]
        ax.bar(np.arange(len(sizes)) + i * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(sizes)) + width * (len(names) - 1) / 2, [f"batch {s}" for s in sizes])
    ax.set_yscale("log")
    ax.set_ylabel("rows / s (log)")
    ax.set_title("Feature transform throughput")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the large batch")
    p.add_argument("--budget", type=float, default=2.0, help="seconds per small-batch measurement")
    p.add_argument("--repeats", type=int, default=3, help="runs of the large batch (best is kept)")
    p.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    p.add_argument("--quick", action="store_true", help="a few calls per measurement: proves it runs, no more")
    args = p.parse_args(argv)
    if args.quick:
        results = run(args.rows, 0.0, 1, min_calls=20, train_rows=5000)
        results["quick"] = True
    else:
        results = run(args.rows, args.budget, args.repeats)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "features_bench.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    (out / "features_bench.txt").write_text(text + "\n")
    plot(results, out / "features_bench.png")
    print(text)
    print(f"wrote {out / 'features_bench.json'}, .txt and .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

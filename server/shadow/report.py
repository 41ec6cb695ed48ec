"""``skewless shadow-report LOG``: what a divergence log holds, as a summary and a PNG.

The log holds only divergent samples (over the tolerance), so every figure here is about those: how many per
(primary, challenger) pair and over time, how far apart the outputs were, and how often the two still agreed
on the decision (argmax / threshold) although their values differed. The server's ``skewless_shadow_*``
metrics carry the totals over every mirrored request.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TIME_BINS = 20


def read_log(path: str | Path):
    """All complete divergence files under ``path`` (a directory, searched recursively, or one file)."""
    import pyarrow.parquet as pq

    path = Path(path)
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .parquet files under {path}")
    columns = ["time", "request_id", "primary_model", "primary_version", "challenger_model", "challenger_version",
               "max_abs_diff", "agree"]
    tables = [pq.read_table(f, columns=columns) for f in files]
    import pyarrow as pa

    return pa.concat_tables(tables).to_pandas(), len(files)


def summarise(df, files: int) -> dict:
    pairs = []
    for (pm, pv, cm, cv), g in df.groupby(["primary_model", "primary_version", "challenger_model",
                                           "challenger_version"]):
        d = g["max_abs_diff"].to_numpy()
        pairs.append({"primary": f"{pm}:{pv}", "challenger": f"{cm}:{cv}", "divergent": len(g),
                      "agreement": float(g["agree"].mean()),
                      "max_abs_diff": {"p50": float(np.quantile(d, 0.5)), "p90": float(np.quantile(d, 0.9)),
                                       "p99": float(np.quantile(d, 0.99)), "max": float(d.max())}})
    return {"files": files, "divergent": len(df), "first": str(df["time"].min()), "last": str(df["time"].max()),
            "pairs": pairs}


def plot(df, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7))
    d = df["max_abs_diff"].to_numpy()
    finite = d[np.isfinite(d)]
    positive = finite[finite > 0]
    if positive.size and positive.max() / positive.min() >= 10:  # spread over decades: log bins
        ax1.hist(finite, bins=np.logspace(np.log10(positive.min()), np.log10(positive.max()) + 1e-9, 40))
        ax1.set_xscale("log")
    elif finite.size:  # from 0: differences that are all about equal show as one bar at their value
        hi = float(finite.max()) * 1.05 or 1.0
        ax1.hist(finite, bins=40, range=(min(0.0, float(finite.min())), hi))
        ax1.ticklabel_format(axis="x", useOffset=False)
    ax1.set_xlabel("largest |primary - challenger| per request")
    ax1.set_ylabel("divergent requests")
    ax1.set_title(f"difference histogram ({len(df)} divergent samples)")
    t = df["time"].astype("int64").to_numpy() / 1e9
    edges = np.linspace(t.min(), t.max() + 1e-6, TIME_BINS + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, TIME_BINS - 1)
    counts = np.bincount(idx, minlength=TIME_BINS)
    agree = np.bincount(idx, weights=df["agree"].to_numpy().astype(float), minlength=TIME_BINS)
    centers = (edges[:-1] + edges[1:]) / 2 - t.min()
    with np.errstate(invalid="ignore", divide="ignore"):
        ax2.plot(centers, agree / counts, marker="o", label="agreement (decision) among divergent")
    ax2.set_ylim(-0.05, 1.05)
    ax2.set_xlabel("seconds since the first sample")
    ax2.set_ylabel("agreement")
    ax3 = ax2.twinx()
    ax3.bar(centers, counts, width=(edges[1] - edges[0]) * 0.8, alpha=0.25, color="gray", label="divergent")
    ax3.set_ylabel("divergent requests")
    ax2.set_title("agreement over time")
    ax2.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_report(log: str, png: str, json_path: str | None = None) -> int:
    try:
        df, files = read_log(log)
    except (FileNotFoundError, OSError) as exc:
        print(f"skewless shadow-report: {exc}", file=sys.stderr)
        return 2
    summary = summarise(df, files)
    print(f"{summary['divergent']} divergent samples in {files} files, {summary['first']} .. {summary['last']}")
    for p in summary["pairs"]:
        q = p["max_abs_diff"]
        print(f"  {p['primary']} vs {p['challenger']}: {p['divergent']} divergent, decision agreement "
              f"{p['agreement']:.1%}, |diff| p50 {q['p50']:.4g} p90 {q['p90']:.4g} p99 {q['p99']:.4g} "
              f"max {q['max']:.4g}")
    if len(df):
        plot(df, png)
        print(f"wrote {png}")
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2))
    return 0

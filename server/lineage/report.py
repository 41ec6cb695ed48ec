"""``skewless quality-report LOGDIR``: quality by model version and time window from the joined label logs.

Reads ``LOGDIR/<model>/joined-*.parquet`` (written by the server's ``--prediction-log``; LOGDIR may also be
one model's directory) and writes ``quality.json`` plus one ``quality-<model>.png`` per model: the same
figures as the live ``skewless_model_quality`` metric (lineage/quality.py computes both), per version over
all pairs and per window of prediction time, with the label delay distribution.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .quality import metrics


def joined_files(logdir: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for f in sorted(logdir.rglob("joined-*.parquet")):
        out.setdefault(f.parent.name, []).append(f)
    return out


def latest_revisions(table: Any) -> Any:
    """The joined rows readers should take: per (request_id, row), the one with the highest ``revision`` (a
    corrected label is written again with its revision one higher; files from before revisions count as 0)."""
    import pyarrow as pa

    if "revision" not in table.column_names:
        table = table.append_column("revision", pa.array(np.zeros(table.num_rows, np.int32)))
    table = table.select(["request_id", "row", "revision", "model_version", "prediction_time", "label_time",
                          "score", "label"])
    if table.num_rows < 2:
        return table
    table = table.sort_by([("request_id", "ascending"), ("row", "ascending"), ("revision", "descending")])
    rid = table.column("request_id").to_numpy(zero_copy_only=False)
    row = table.column("row").to_numpy(zero_copy_only=False)
    first = np.r_[True, (rid[1:] != rid[:-1]) | (row[1:] != row[:-1])]
    return table.filter(pa.array(first))


def _numpy(column: Any) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    return column.to_numpy(zero_copy_only=False)


def _task(labels: np.ndarray) -> str:
    return "classification" if np.isin(labels, (0.0, 1.0)).all() else "regression"


def report(logdir: Path, window_s: float, task: str | None = None, progress: bool = True) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    files = joined_files(logdir)
    out: dict[str, Any] = {"window_s": window_s, "models": {}}
    total = sum(len(v) for v in files.values())
    with tqdm(total=total, unit="files", file=sys.stderr, desc="quality-report", disable=not progress) as bar:
        for model, paths in files.items():
            tables = []
            for p in paths:
                tables.append(latest_revisions(pq.read_table(p)))
                bar.update(1)
            t = latest_revisions(pa.concat_tables(tables))
            v, pt, lt, s, y = (_numpy(t.column(k)) for k in ("model_version", "prediction_time", "label_time",
                                                              "score", "label"))
            kind = task or _task(y[np.isfinite(y)])
            versions: dict[str, Any] = {}
            start = pt.min() if pt.size else 0
            for version in np.unique(v):
                sel = v == version
                delay = (lt[sel] - pt[sel]) / 1e9
                q = np.quantile(delay, [0.5, 0.9, 0.99]) if delay.size else [math.nan] * 3
                entry: dict[str, Any] = {"overall": metrics(kind, s[sel], y[sel]),
                                         "delay_s": {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2])},
                                         "windows": []}
                bins = ((pt[sel] - start) // int(window_s * 1e9)).astype(np.int64)
                for b in np.unique(bins):
                    inb = bins == b
                    fig = metrics(kind, s[sel][inb], y[sel][inb])
                    fig["start_ns"] = int(start + b * int(window_s * 1e9))
                    entry["windows"].append(fig)
                versions[str(int(version))] = entry
            out["models"][model] = {"task": kind, "versions": versions}
    return out


def plot(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for model, m in doc["models"].items():
        names = ("accuracy", "auc", "log_loss", "ece") if m["task"] == "classification" else ("mae", "rmse")
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            for version, entry in m["versions"].items():
                w = entry["windows"]
                t0 = w[0]["start_ns"] if w else 0
                xs = [(x["start_ns"] - t0) / 60e9 for x in w]
                ys = [x.get(name, math.nan) for x in w]
                ax.plot(xs, ys, marker="o", label=f"v{version}")
            ax.set_title(name)
            ax.set_xlabel("minutes since first prediction")
            ax.legend(fontsize="small")
        fig.suptitle(f"{model}: quality per version, {doc['window_s']:g}s windows")
        fig.tight_layout()
        path = out_dir / f"quality-{model}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def _run(args: argparse.Namespace) -> int:
    logdir = Path(args.logdir)
    if not logdir.is_dir():
        print(f"quality-report: {logdir} is not a directory", file=sys.stderr)
        return 2
    try:
        doc = report(logdir, args.window, args.task, not args.no_progress)
    except ImportError as exc:
        print(f"quality-report needs pyarrow, tqdm and matplotlib ({exc}): pip install 'skewless[features]' "
              "matplotlib", file=sys.stderr)
        return 2
    if not doc["models"]:
        print(f"quality-report: no joined-*.parquet under {logdir} (labels joined by a server run with "
              "--prediction-log)", file=sys.stderr)
        return 1
    out = Path(args.out or logdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(_nan_to_none(doc), indent=2))
    pngs = plot(doc, out)
    print(f"wrote {out / 'quality.json'} and {', '.join(str(p) for p in pngs)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quality-report", help="quality by model version and time window from joined label logs "
                                              "(JSON + PNG)")
    p.add_argument("logdir", help="the server's --prediction-log directory (or one model's)")
    p.add_argument("--out", default=None, help="where to write quality.json and the PNGs (default: LOGDIR)")
    p.add_argument("--window", type=float, default=3600.0, metavar="S", help="time window (default 3600 s)")
    p.add_argument("--task", choices=["classification", "regression"], default=None,
                   help="default: classification when every label is 0 or 1")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)

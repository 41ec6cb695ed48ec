"""Turning a load-generator result into the three outputs: JSON, a PNG and a one-screen table."""

from __future__ import annotations

import json
import math
import signal
import statistics
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# Quantiles kept in the JSON so a CDF can be redrawn without the raw samples: dense in the tail.
CDF_QUANTILES = np.unique(np.concatenate([np.linspace(0.0, 0.9, 46), 1.0 - np.logspace(-1, -4, 31), [1.0]]))


def latency_summary(lat_s: np.ndarray) -> dict[str, Any]:
    """Exact percentiles of the merged samples (ms), and CDF points as [latency_ms, quantile] pairs."""
    if lat_s.size == 0:
        return {"count": 0, "mean": None, "min": None, "max": None,
                **{f"p{p:g}": None for p in PERCENTILES}, "cdf": []}
    ms = lat_s * 1e3
    pct = np.percentile(ms, PERCENTILES)
    cdf = np.quantile(ms, CDF_QUANTILES)
    return {"count": int(ms.size), "mean": float(ms.mean()), "min": float(ms.min()), "max": float(ms.max()),
            **{f"p{p:g}": float(v) for p, v in zip(PERCENTILES, pct, strict=True)},
            "cdf": [[round(float(x), 5), round(float(q), 6)] for x, q in zip(cdf, CDF_QUANTILES, strict=True)]}


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def median(vals: list[float | None]) -> float | None:
    """Median of the figures that exist (a point can lack one, e.g. CPU without ``--server-pid``)."""
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def point_figures(p: dict[str, Any]) -> dict[str, Any]:
    """One closed-loop point of a load-generator result, flattened to the figures the one-run reports compare."""
    lat, cpu, cli = p["latency_ms"], p.get("server_cpu") or {}, p.get("client_cpu") or {}
    answered = p["requests"] + p["error_count"]
    return {"clients": p["concurrency"], "rps": p["throughput_rps"],
            "p50_ms": lat["p50"], "p99_ms": lat["p99"], "cpu_us_per_request": cpu.get("us_per_request"),
            "server_cores": cpu.get("cores"), "client_cores": cli.get("cores"),
            "client_us_per_request": cli["seconds"] * 1e6 / answered if cli and answered else None,
            "mean_batch_size": (p.get("server_stats") or {}).get("mean_batch_size"),
            # A wrong reply is an error: transport errors plus failed spot-checks.
            "errors": p["error_count"] + p["checks"]["failed"], "transport_errors": p["errors"],
            "error_messages": p.get("error_messages") or {}, "checked": p["checks"]["checked"],
            "check_failed": p["checks"]["failed"], "first_failure": p["checks"]["first_failure"]}


def point_label(p: dict[str, Any]) -> str:
    kind = "stream" if p["stream"] else "unary"
    if p["mode"] == "closed":
        return f"{kind} c={p['concurrency']}"
    return f"{kind} rate={p['offered_rate']:.0f}/s"


def format_table(result: dict[str, Any]) -> str:
    cfg = result["config"]
    head = (f"{result['target'].get('server', '?')} @ {cfg['target']}  model={cfg['model']}  rows/request="
            f"{result['workload']['rows']}  processes={cfg['processes']}  duration={cfg['duration']}s "
            f"(+{cfg['warmup']}s warm-up)")
    cols = ("point", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "errors", "batch", "srv µs/req",
            "srv cores", "cli cores")
    rows = []
    for p in result["points"]:
        lat, srv = p["latency_ms"], p.get("server_cpu") or {}
        stats = p.get("server_stats") or {}
        rows.append((point_label(p), _fmt(p["throughput_rps"], ".0f"), _fmt(lat["p50"]), _fmt(lat["p90"]),
                     _fmt(lat["p99"]), _fmt(lat["p99.9"]), str(p["error_count"]),
                     _fmt(stats.get("mean_batch_size")), _fmt(srv.get("us_per_request"), ".0f"),
                     _fmt(srv.get("cores")), _fmt((p.get("client_cpu") or {}).get("cores"))))
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths, strict=True)))
    out = [head, line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths,
                                                                                                   strict=True))))
    notes = []
    for p in result["points"]:
        if p["error_count"]:
            notes.append(f"{point_label(p)}: errors {p['errors']} {p.get('error_messages', {})}")
        if p["checks"]["failed"]:
            notes.append(f"{point_label(p)}: {p['checks']['failed']} of {p['checks']['checked']} spot-checks "
                         f"failed, first: {p['checks']['first_failure']}")
    return "\n".join(out + notes)


def plot(result: dict[str, Any], path: Path, title: str | None = None) -> Path:
    """Throughput against p99 across the sweep (the knee is the useful capacity) and each point's CDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    series: dict[str, list[dict[str, Any]]] = {}
    for p in result["points"]:
        series.setdefault(f"{p['mode']} loop, {'stream' if p['stream'] else 'unary'}", []).append(p)
    for name, pts in series.items():
        pts = [p for p in pts if p["latency_ms"]["p99"] is not None]
        if not pts:
            continue
        xs = [p["throughput_rps"] for p in pts]
        ys = [p["latency_ms"]["p99"] for p in pts]
        ax1.plot(xs, ys, "o-", label=name)
        for p, x, y in zip(pts, xs, ys, strict=True):
            ax1.annotate(f"c={p['concurrency']}" if p["mode"] == "closed" else f"{p['offered_rate']:.0f}/s",
                         (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax1.set_xlabel("throughput (requests/s)")
    ax1.set_ylabel("p99 latency (ms)")
    ax1.set_yscale("log")
    ax1.yaxis.set_major_formatter(plain)
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    ax1.set_title("throughput vs p99")
    for p in result["points"]:
        cdf = p["latency_ms"]["cdf"]
        if cdf:
            ax2.plot([c[0] for c in cdf], [c[1] for c in cdf], label=point_label(p))
    ax2.set_xscale("log")
    ax2.xaxis.set_major_formatter(plain)
    ax2.set_xlabel("latency (ms)")
    ax2.set_ylabel("fraction of requests")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    ax2.set_title("latency CDF")
    fig.suptitle(title or f"{result['target'].get('server', '?')} @ {result['config']['target']}: "
                 f"model {result['config']['model']}, {result['workload']['rows']} row(s)/request")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out_dir: Path, plot_png: bool = True) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out_dir / "bench.json"), "table": str(out_dir / "bench.txt")}
    if plot_png:
        files["png"] = str(plot(result, out_dir / "bench.png"))
    result["files"] = files
    Path(files["json"]).write_text(json.dumps(result, indent=1) + "\n")
    Path(files["table"]).write_text(format_table(result) + "\n")
    return files


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C while inside, so a report's ``with`` blocks stop every server and client
    process it started (signals can only be set from the main thread; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

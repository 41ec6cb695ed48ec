"""What telemetry costs a request, from one run on one machine.

Four ``skewless serve`` subprocesses on the example model repository, each on its own free ports and kept up
for the whole run, differ only in telemetry:

- ``off``: ``--no-metrics`` and no OTEL_* variable at all;
- ``on``: the default (``--metrics``), ``/metrics`` scraped every second by this script while that server is
  under load (as Prometheus would), OTLP metric export every second to an in-process collector
  (``otlp_sink``), and tracing configured but sampled at 0 (``parentbased_traceidratio`` with ratio 0);
- ``traces_1.0``: as ``on`` with ``OTEL_TRACES_SAMPLER=always_on``; the spans the collector received say
  whether tracing was active in this build at all;
- ``on_dead_collector``: as ``on`` with the OTLP endpoint on a port nobody listens on (a dead collector must
  not fail, block or slow a request).

Model ``mlp`` (FP32 [1,32] -> [1,2]), 1 row per request, unary gRPC, closed loop at 64 clients (the target's
benchmark) and 1 client (latency), driven by the load generator (``run_bench``): requests/s, p50/p99, server
CPU µs per request (the server's user+sys time ÷ requests answered), errors, replies spot-checked against
onnxruntime. The variants alternate within each of ``--rounds`` rounds (the first one rotating), and each
ratio to ``off`` is the median of the rounds' ratios, so both sides of a ratio share a spell of the machine's
noise. Target: ``on`` ÷ ``off`` CPU per request ≤ 1.05 at 64 clients; the verdict line says the figure,
whatever it is. Writes telemetry.json, telemetry.png and telemetry.txt into --out and prints the table.

    python -m skewless.benchmarks.telemetry_report            # 6 s + 2 s warm-up per point, 3 rounds: ~4 min
    python -m skewless.benchmarks.telemetry_report --quick    # 1.5 s points, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from . import report
from .loadgen import RESULTS_DIR, BenchConfig, run_bench
from .otlp_sink import OtlpSink
from .servers import EXAMPLE_MODELS, ServerProcess, start_skewless
from .workload import Workload, build_workload, fetch_model

MODEL = "mlp"
CLIENTS = (64, 1)
VARIANTS = ("off", "on", "traces_1.0", "on_dead_collector")
NAMES = {"off": "off", "on": "on (traces at 0)", "traces_1.0": "on, traces at 1.0",
         "on_dead_collector": "on, dead collector"}
TARGET = 1.05
SCRAPE_INTERVAL = 1.0
RATIO_KEYS = {"cpu": "cpu_us_per_request", "rps": "rps", "p50": "p50_ms", "p99": "p99_ms"}


def log(msg: str) -> None:
    print(f"[telemetry {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def unused_port() -> int:
    """A port nothing listens on (bound once by the OS, then released): the dead collector's address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def variant_env(variant: str, endpoint: str | None) -> dict[str, str | None]:
    """The server's environment changes: every inherited OTEL_* removed, then the variant's own set."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OTEL_")}
    if variant == "off":
        return env
    assert endpoint is not None
    env.update({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_METRIC_EXPORT_INTERVAL": "1000",
                "OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0"})
    if variant == "traces_1.0":
        env["OTEL_TRACES_SAMPLER"] = "always_on"
        env.pop("OTEL_TRACES_SAMPLER_ARG")
    return env


class Scraper:
    """GETs ``/metrics`` every ``interval`` seconds from whichever server ``aim`` last named, as Prometheus
    would, and counts scrapes, bytes and failures; aimed at nothing, it waits."""

    def __init__(self, interval: float = SCRAPE_INTERVAL) -> None:
        self.interval = interval
        self._url: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.counts = self._zero()
        self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)
        self._thread.start()

    @staticmethod
    def _zero() -> dict[str, Any]:
        return {"scrapes": 0, "bytes": 0, "failures": 0, "seconds": 0.0, "last_failure": None}

    def aim(self, address: str | None) -> dict[str, Any]:
        """Scrape ``address`` (host:port) from now on, or nothing; returns the counts since the last aim."""
        with self._lock:
            counts, self.counts = self.counts, self._zero()
            self._url = f"http://{address}/metrics" if address else None
        return counts

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                url = self._url
            if url is None:
                continue
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    size, failure = len(r.read()), None
            except OSError as e:
                size, failure = 0, repr(e)
            with self._lock:
                if url != self._url:
                    continue
                self.counts["scrapes"] += failure is None
                self.counts["failures"] += failure is not None
                self.counts["bytes"] += size
                self.counts["seconds"] += time.perf_counter() - started
                self.counts["last_failure"] = failure or self.counts["last_failure"]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# -- figures -----------------------------------------------------------------------------------------------
def summarise(rows: dict[tuple[str, int], list[dict[str, Any]]], rounds: int) -> dict[str, Any]:
    """Each (variant, clients) figure as the median of its rounds, counts summed; ÷ off ratios as the median
    of the per-round ratios (each round's points were measured back to back)."""
    points = []
    for c in CLIENTS:
        for v in VARIANTS:
            per = rows[(v, c)]
            agg: dict[str, Any] = {"variant": v, "name": NAMES[v], "clients": c, "rounds": len(per)}
            for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "server_cores", "client_cores",
                        "mean_batch_size"):
                agg[key] = report.median([r[key] for r in per])
            for key in ("errors", "checked", "check_failed", "scrapes", "scrape_bytes", "scrape_failures",
                        "metric_exports", "metric_points", "spans", "trace_exports"):
                agg[key] = sum(r[key] for r in per)
            agg["error_messages"] = {k: n for r in per for k, n in r["error_messages"].items()}
            agg["first_failure"] = next((r["first_failure"] for r in per if r["first_failure"]), None)
            points.append(agg)
    ratios = []
    for c in CLIENTS:
        for v in VARIANTS[1:]:
            per_round = [{name: report.ratio(t[key], o[key]) for name, key in RATIO_KEYS.items()}
                         for t, o in zip(rows[(v, c)], rows[("off", c)], strict=True)]
            ratios.append({"variant": v, "name": NAMES[v], "clients": c, "rounds": per_round,
                           **{name: report.median([r[name] for r in per_round]) for name in RATIO_KEYS}})
    on = next(r for r in ratios if r["variant"] == "on" and r["clients"] == max(CLIENTS))
    verdict = (f"telemetry on ÷ off CPU/request = {report._fmt(on['cpu'])}× (target ≤ {TARGET:.2f}×) at "
               f"{max(CLIENTS)} clients, unary, median of {rounds} round(s)")
    return {"points": points, "ratios": ratios, "rounds": rounds, "verdict": verdict,
            "on_cpu_ratio": on["cpu"], "target": TARGET,
            "within_target": on["cpu"] is not None and on["cpu"] <= TARGET}


def format_table(s: dict[str, Any]) -> str:
    f = report._fmt
    out = [s["title"],
           f"{'':<24}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'srv µs/req':>11}{'srv cores':>10}{'errors':>7}"
           f"{'checks':>8}{'scrapes':>8}{'kB/scr':>7}{'OTLP exp':>9}{'spans':>7}"]
    for c in CLIENTS:
        out.append(f"{c} client{'s' if c > 1 else ''}, closed loop, unary gRPC, 1 row/request")
        for p in (p for p in s["points"] if p["clients"] == c):
            kb = p["scrape_bytes"] / p["scrapes"] / 1e3 if p["scrapes"] else None
            out.append(f"  {p['name']:<22}{f(p['rps'], '.0f'):>8}{f(p['p50_ms'], '.3f'):>8}{f(p['p99_ms'], '.3f'):>8}"
                       f"{f(p['cpu_us_per_request'], '.0f'):>11}{f(p['server_cores']):>10}{p['errors']:>7}"
                       f"{p['checked']:>8}{p['scrapes']:>8}{f(kb, '.1f'):>7}{p['metric_exports']:>9}"
                       f"{p['spans']:>7}")
    out.append(f"÷ off (median of {s['rounds']} alternating round(s); per round in brackets)")
    out.append(f"  {'':<30}{'CPU/req':>8}{'req/s':>8}{'p50':>8}{'p99':>8}   rounds: CPU/req, req/s, p50, p99")
    for r in s["ratios"]:
        per = "; ".join(" ".join(f(x[k]) for k in RATIO_KEYS) for x in r["rounds"])
        out.append(f"  {r['name'] + ', ' + str(r['clients']) + ' cl.':<30}"
                   + "".join(f"{f(r[k]) + '×':>8}" for k in RATIO_KEYS) + f"   [{per}]")
    out.append(s["verdict"])
    for p in s["points"]:
        if p["errors"]:
            out.append(f"  ! {p['name']}, {p['clients']} client(s): {p['errors']} errors {p['error_messages']}"
                       + (f"; {p['check_failed']} wrong replies, first: {p['first_failure']}"
                          if p["check_failed"] else ""))
    out += s["notes"]
    return "\n".join(out)


def plot(s: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {v: f"C{i}" for i, v in enumerate(VARIANTS)}
    by = {(p["variant"], p["clients"]): p for p in s["points"]}
    top_c = max(CLIENTS)
    fig, axes = plt.subplots(2, 2, figsize=(14, 9.5))

    def bars(ax: Any, key: str, title: str, ylabel: str, fmt: str) -> None:
        vals = [by[(v, top_c)][key] or 0 for v in VARIANTS]
        drawn = ax.bar(range(len(VARIANTS)), vals, 0.6, color=[colors[v] for v in VARIANTS])
        for b, val in zip(drawn, vals, strict=True):
            ax.annotate(format(val, fmt), (b.get_x() + b.get_width() / 2, val), ha="center", va="bottom", fontsize=9)
        ax.set_xticks(range(len(VARIANTS)), [NAMES[v] for v in VARIANTS], fontsize=9)
        ax.set_ylim(0, (max(vals) or 1) * 1.15)  # linear from 0: bar heights compare as ratios
        ax.set_title(f"{title}, {top_c} clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)

    bars(axes[0][0], "cpu_us_per_request", "server CPU per request (user+sys)", "CPU µs per request", ".0f")
    bars(axes[0][1], "rps", "throughput", "requests/s", ".0f")
    for ax, c in zip(axes[1], sorted(CLIENTS), strict=True):
        for k, (key, name, alpha) in enumerate((("p50_ms", "p50", 1.0), ("p99_ms", "p99", 0.45))):
            vals = [by[(v, c)][key] or 0 for v in VARIANTS]
            xs = [i + (k - 0.5) * 0.38 for i in range(len(VARIANTS))]
            drawn = ax.bar(xs, vals, 0.38, color=[colors[v] for v in VARIANTS], alpha=alpha, label=name,
                           edgecolor="black", linewidth=0.4)
            for b, val in zip(drawn, vals, strict=True):
                ax.annotate(f"{val:.3g}", (b.get_x() + b.get_width() / 2, val), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(VARIANTS)), [NAMES[v] for v in VARIANTS], fontsize=9)
        ax.set_ylim(0, max((by[(v, c)]["p99_ms"] or 0) for v in VARIANTS) * 1.15 or 1)
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{c} client{'s' if c > 1 else ''}: p50 (solid) and p99 (light)")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(s["title"] + "\n" + s["verdict"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the run -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.telemetry_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, help="measured seconds per point (default 6; 1.5 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 2; 0.5 with --quick)")
    p.add_argument("--quick", action="store_true", help="short points and 1 round, for a smoke run")
    p.add_argument("--rounds", type=int, help="alternating rounds of the four variants (default 3; 1 with --quick)")
    p.add_argument("--processes", type=int, default=1, help="client processes per point")
    p.add_argument("--model-repository", default=str(EXAMPLE_MODELS))
    p.add_argument("--out", help="output directory (default benchmarks/results/telemetry-<timestamp>)")
    args = p.parse_args(argv)
    args.duration = args.duration or (1.5 if args.quick else 6.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    args.rounds = max(1, args.rounds or (1 if args.quick else 3))
    out = Path(args.out or RESULTS_DIR / f"telemetry-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)

    with report.sigterm_as_interrupt():
        return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> int:
    t_start = time.monotonic()
    onnx_path = Path(args.model_repository) / MODEL / "1" / "model.onnx"
    total = args.rounds * len(CLIENTS) * len(VARIANTS)
    runs: dict[str, Any] = {}
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {(v, c): [] for v in VARIANTS for c in CLIENTS}
    sink_totals: dict[str, dict[str, int]] = {}
    with ExitStack() as stack:
        # One collector per live variant, so what each server exported is told apart.
        sinks = {v: stack.enter_context(OtlpSink()) for v in ("on", "traces_1.0")}
        dead = f"http://127.0.0.1:{unused_port()}"
        endpoints = {"off": None, "on": sinks["on"].endpoint, "traces_1.0": sinks["traces_1.0"].endpoint,
                     "on_dead_collector": dead}
        servers: dict[str, ServerProcess] = {}
        stop_s: dict[str, float] = {}

        def stop(v: str) -> None:
            # Timed: a shutdown that waits on an unreachable collector is a telemetry cost too.
            started = time.monotonic()
            servers[v].stop()
            stop_s[v] = time.monotonic() - started
            log(f"{v} stopped in {stop_s[v]:.1f} s")

        for v in VARIANTS:
            extra = ["--no-metrics"] if v == "off" else []
            log(f"starting {v}: skewless serve {' '.join(extra)} (OTLP endpoint {endpoints[v]})")
            servers[v] = start_skewless(Path(args.model_repository), out / f"skewless-{v}.log", extra,
                                        variant_env(v, endpoints[v]))
            stack.callback(stop, v)
        scraper = Scraper()
        stack.callback(scraper.stop)
        log(f"{total} points of {args.warmup:g}+{args.duration:g} s")
        # One workload (the same 16 input variants, onnxruntime's outputs for each) for every point.
        wl: Workload = build_workload(fetch_model(servers["off"].target, MODEL), rows=1, variants=16,
                                      onnx_path=str(onnx_path))
        done = 0
        for i in range(args.rounds):
            order = VARIANTS[i % len(VARIANTS):] + VARIANTS[:i % len(VARIANTS)]
            for c in CLIENTS:
                for v in order:
                    key = f"{v}_c{c}_r{i}"
                    log(f"round {i + 1}/{args.rounds}, {c} client(s), {NAMES[v]} ({done}/{total} done, "
                        f"{time.monotonic() - t_start:.0f} s elapsed)")
                    srv = servers[v]
                    bc = BenchConfig(target=srv.target, model=MODEL, concurrency=[c], processes=args.processes,
                                     duration=args.duration, warmup=args.warmup, server_pid=srv.pid,
                                     check_against_onnx=str(onnx_path), plot=False,
                                     out=str(out / "runs" / key), label=f"telemetry_report {key}")
                    before = sinks[v].snapshot() if v in sinks else None
                    scraper.aim(srv.addresses.get("http") if v != "off" else None)
                    res = run_bench(bc, wl)
                    scraped = scraper.aim(None)
                    after = sinks[v].snapshot() if v in sinks else None
                    got = {k: after[k] - before[k] for k in after} if before and after else {}
                    res["telemetry"] = {"variant": v, "scrape": scraped, "sink": got}
                    runs[key] = res
                    rows[(v, c)].append({"variant": v, **report.point_figures(res["points"][0]),
                                         "scrapes": scraped["scrapes"], "scrape_bytes": scraped["bytes"],
                                         "scrape_failures": scraped["failures"],
                                         **{k: got.get(k, 0) for k in ("metric_exports", "metric_points",
                                                                       "spans", "trace_exports")}})
                    done += 1
        sink_totals = {v: s.snapshot() for v, s in sinks.items()}
    log("servers stopped")

    wall = time.monotonic() - t_start
    summary = summarise(rows, args.rounds)
    summary["sinks"] = sink_totals
    summary["shutdown_s"] = stop_s
    summary["title"] = (f"Telemetry cost: example MLP ({MODEL}: FP32 [1,32] -> [1,2]), 1 row/request, one run "
                        f"{datetime.now():%Y-%m-%d %H:%M} on {platform.node()} ({os.cpu_count()} CPUs)")
    spans = sink_totals["traces_1.0"]["spans"]
    cpu = {r["variant"]: r["cpu"] for r in summary["ratios"] if r["clients"] == max(CLIENTS)}
    summary["notes"] = [
        "srv µs/req: the server process's user+sys CPU ÷ requests answered in the window (everything the "
        "server does meanwhile counts: serving /metrics, exporting OTLP); errors: failed requests plus wrong "
        "replies; checks: replies spot-checked against onnxruntime in-process.",
        f"scrapes, kB/scr: GET /metrics every {SCRAPE_INTERVAL:g} s by this script while the point ran (warm-up "
        "included); OTLP exp: metric exports the collector received from that server meanwhile (interval "
        "1 s); spans: spans it received.",
        f"on: --metrics, OTLP metrics + traces to an in-process collector, sampler parentbased_traceidratio 0; "
        f"traces_1.0: sampler always_on; dead collector: OTLP to {dead}, where nobody listens; off: --no-metrics, "
        "no OTEL_* variable.",
        ("traces at 1.0: the collector received no span, so tracing is not active in this build (the OTEL_TRACES_* "
         "variables were passed and did nothing); that row measures the same code as 'on', so the gap between "
         f"their CPU/request ratios at {max(CLIENTS)} clients ({report._fmt(cpu['traces_1.0'])}× vs "
         f"{report._fmt(cpu['on'])}×) is this machine's noise." if spans == 0 else
         f"traces at 1.0: the collector received {spans} spans in all."),
        "SIGTERM to exit: " + ", ".join(f"{NAMES[v]} {stop_s.get(v, float('nan')):.1f} s" for v in VARIANTS)
        + " (not a request, but a dead collector shows here if shutdown waits on its export retries).",
        f"client: {args.processes} process(es) on the same machine as the servers ({os.cpu_count()} CPUs, shared; "
        f"the idle servers keep exporting every second); {args.duration:g} s measured + {args.warmup:g} s "
        f"warm-up per point, {args.rounds} round(s); figures are medians of the rounds; run took {wall:.0f} s.",
    ]
    table = format_table(summary)
    result = {"tool": "skewless telemetry_report", "format": 1, "summary": summary, "runs": runs, "wall_s": wall,
              "config": {"duration": args.duration, "warmup": args.warmup, "rounds": args.rounds,
                         "processes": args.processes, "quick": args.quick, "clients": list(CLIENTS),
                         "variants": {v: {"argv_extra": ["--no-metrics"] if v == "off" else [],
                                          "env": {k: val for k, val in variant_env(v, endpoints[v]).items()
                                                  if val is not None}} for v in VARIANTS},
                         "model_repository": args.model_repository, "argv": sys.argv}}
    (out / "telemetry.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "telemetry.txt").write_text(table + "\n")
    plot(summary, out / "telemetry.png")
    print(table)
    print(f"wrote {out / 'telemetry.json'}, {out / 'telemetry.png'}, {out / 'telemetry.txt'}")
    return 1 if any(p["errors"] for p in summary["points"]) else 0


if __name__ == "__main__":
    sys.exit(main())

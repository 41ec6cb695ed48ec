"""Batching figures, from one run on one machine.

Every server is started here as a subprocess on 127.0.0.1 and a free port, from temporary repositories built
for the run, and driven by the load generator; the figures come out side by side in one table:

1. the example MLP, 1 row/request, 64 clients, unary: skewless with batching on (the example config, which
   sets a latency objective: the adaptive mode), with batching off (the same config without
   ``dynamic_batching``) and the bare echo server (the transport ceiling): requests/s, p50/p99, server CPU
   µs per request, mean batch size; skewless ÷ echo ratios (skewless and echo points alternate for --rounds
   rounds, so both sample the same spells of a shared machine's noise; the round with the median CPU ratio is
   shown, every round's ratios are listed);
2. 64 requests in flight over ModelStreamInfer: skewless vs the echo server's stream (CPU per request), and
   skewless's stream requests/s ÷ its unary requests/s; over one stream, and over 64 streams with one
   request each (as perf_analyzer's streaming contexts send), both in alternating rounds;
3. 1 client: p50/p99 with batching on vs off (alternating rounds too, the median p50 ratio shown);
4. open loop (Poisson) at 50/80/95% of the maximum rate measured in step 1 (batching on, closed loop): p99
   without the adaptive mode (the example config without ``skewless.latency_slo_ms``: Triton's plain
   semantics) and with it (``skewless.latency_slo_ms`` = 10);
5. a compute-heavy MLP 256->1024->1024->10 (FP32, built here from a fixed seed), 64 rows/request, 8 clients:
   rows/s through skewless and the batch sizes it formed (ModelStatistics), against the same model run
   in-process in onnxruntime by one caller at those batch sizes.

Writes batching.json, batching.png and batching.txt into --out and prints the table.

    python -m skewless.benchmarks.batching_report            # ~8 s per point, about 7 minutes
    python -m skewless.benchmarks.batching_report --quick    # ~1.5 s per point
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import report
from .loadgen import RESULTS_DIR, BenchConfig, run_bench
from .servers import EXAMPLE_MODELS, exit_on_interrupt, start_echo, start_skewless

MODEL = "mlp"
CLIENTS = 64
RATE_PERCENTS = (50, 80, 95)
SLO_MS = 10.0
HEAVY = "heavy_mlp"
HEAVY_LAYERS = (256, 1024, 1024, 10)
HEAVY_ROWS = 64
HEAVY_CLIENTS = 8
HEAVY_MAX_BATCH = 512
SLO_PARAMETER = "skewless.latency_slo_ms"
OVERLOAD_ERRORS = ("CANCELLED", "DRAIN_TIMEOUT", "CLIENT_MAX_OUTSTANDING")


def log(msg: str) -> None:
    print(f"[batching {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# -- repositories ------------------------------------------------------------------------------------------
def mlp_config(source: Path, variant: str) -> str:
    """The example MLP's config as is ("on"), without dynamic_batching ("off"), without a latency objective
    ("plain": Triton's semantics), or with ``skewless.latency_slo_ms`` = SLO_MS ("adaptive": the batcher may
    wait up to a budget it tunes within half the objective, and only while other clients are seen sending)."""
    from google.protobuf import text_format

    from skewless.protos import model_config_pb2 as mc

    cfg = mc.ModelConfig()
    text_format.Parse((source / "config.pbtxt").read_text(), cfg)
    if variant == "off":
        cfg.ClearField("dynamic_batching")
    elif variant == "plain":
        for key in (SLO_PARAMETER, "skewless.latency_slo_percentile"):
            if key in cfg.parameters:
                del cfg.parameters[key]
    elif variant == "adaptive":
        if not cfg.HasField("dynamic_batching"):
            cfg.dynamic_batching.SetInParent()
        cfg.parameters[SLO_PARAMETER].string_value = f"{SLO_MS:g}"
    elif variant != "on":
        raise ValueError(variant)
    return text_format.MessageToString(cfg)


def heavy_config(preferred: list[int], delay_us: int) -> str:
    from google.protobuf import text_format

    from skewless.protos import model_config_pb2 as mc

    cfg = mc.ModelConfig(name=HEAVY, platform="onnxruntime_onnx", max_batch_size=HEAVY_MAX_BATCH)
    cfg.input.add(name="input", data_type=mc.TYPE_FP32, dims=[HEAVY_LAYERS[0]])
    cfg.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[HEAVY_LAYERS[-1]])
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    cfg.dynamic_batching.SetInParent()
    cfg.dynamic_batching.preferred_batch_size.extend(preferred)
    cfg.dynamic_batching.max_queue_delay_microseconds = delay_us
    return text_format.MessageToString(cfg)


def build_heavy_onnx(path: Path, layers: tuple[int, ...] = HEAVY_LAYERS, seed: int = 3) -> Path:
    """FP32 MLP (Gemm + Relu between layers), He-initialised from a fixed seed: byte-identical every run."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "input"
    for i, (fan_in, fan_out) in enumerate(zip(layers[:-1], layers[1:], strict=True)):
        w = (rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        out = "logits" if i == len(layers) - 2 else f"fc{i}.out"
        nodes.append(helper.make_node("Gemm", [current, f"fc{i}.weight", f"fc{i}.bias"], [out]))
        current = out
        if i < len(layers) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"relu{i}.out"]))
            current = f"relu{i}.out"
    graph = helper.make_graph(
        nodes, HEAVY, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", layers[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", layers[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="skewless.benchmarks.batching_report")
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def make_repository(root: Path, name: str, onnx_path: Path, config: str) -> Path:
    """A one-model repository: ``root/name/config.pbtxt`` and ``root/name/1/model.onnx``."""
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, root / name / "1" / "model.onnx")
    (root / name / "config.pbtxt").write_text(config)
    return root


# -- in-process baseline -----------------------------------------------------------------------------------
def server_like_session(onnx_path: Path, config: str):
    """An InferenceSession with the session options the server derives from the same config."""
    import onnxruntime as ort

    try:
        from skewless.server.models.config import parse_config
        from skewless.server.models.runtime import session_options

        so = session_options(parse_config(config, "config.pbtxt"))
        how = "the server's session options for this config"
    except Exception as exc:  # server internals may move: fall back to what they do today
        so = ort.SessionOptions()
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        how = f"default options with spinning off (server options unavailable: {type(exc).__name__})"
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"]), how


def chosen_sizes(sizes: dict[int, int], cover: float = 0.95, most: int = 4) -> dict[int, int]:
    """The batch sizes that carried most of the rows (by rows, at least ``cover`` of them, at most ``most``)."""
    total = sum(s * c for s, c in sizes.items())
    out: dict[int, int] = {}
    covered = 0
    for s, c in sorted(sizes.items(), key=lambda sc: -sc[0] * sc[1]):
        out[s] = c
        covered += s * c
        if covered >= cover * total or len(out) >= most:
            break
    return dict(sorted(out.items()))


def inprocess_rows_per_s(onnx_path: Path, config: str, sizes: dict[int, int], duration: float,
                         warmup: float = 0.3) -> dict[str, Any]:
    """One caller running ``session.run`` back to back at each batch size; the mix weighs each size's time
    per batch by how many batches of that size the server formed: rows / time the model alone would need."""
    sess, how = server_like_session(onnx_path, config)
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(1)
    per = max(0.2, duration / max(1, len(sizes)))
    warmup = min(warmup, per)
    by_size: dict[str, Any] = {}
    rows_total = time_total = 0.0
    for size, count in sizes.items():
        feeds = [{name: rng.standard_normal((size, HEAVY_LAYERS[0])).astype(np.float32)} for _ in range(4)]
        end = time.perf_counter() + warmup
        while time.perf_counter() < end:
            sess.run(None, feeds[0])
        calls, cpu0, t0 = 0, time.process_time(), time.perf_counter()
        while True:
            sess.run(None, feeds[calls % 4])
            calls += 1
            if time.perf_counter() - t0 >= per:
                break
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        s_per_batch = wall / calls
        by_size[str(size)] = {"batches_formed": count, "calls": calls, "ms_per_batch": s_per_batch * 1e3,
                              "rows_per_s": size / s_per_batch, "cores": cpu / wall}
        rows_total += size * count
        time_total += s_per_batch * count
    return {"sizes": by_size, "rows_per_s": rows_total / time_total if time_total else None,
            "session": how, "seconds_per_size": per}


# -- rows and figures --------------------------------------------------------------------------------------
def find_point(result: dict[str, Any] | None, mode: str, value: float | None = None,
               stream: bool = False) -> dict[str, Any] | None:
    if not result:
        return None
    pts = [p for p in result["points"] if p["mode"] == mode and p["stream"] == stream]
    if value is not None:
        key = "concurrency" if mode == "closed" else "offered_rate"
        pts = [p for p in pts if p[key] is not None and abs(p[key] - value) < 1e-6]
    return pts[0] if pts else None


def row(name: str, p: dict[str, Any] | None) -> dict[str, Any]:
    if p is None:
        return {"name": name, "missing": True}
    lat, cpu, st = p["latency_ms"], p.get("server_cpu") or {}, p.get("server_stats") or {}
    return {"name": name, "mode": p["mode"], "stream": p["stream"], "concurrency": p["concurrency"],
            "offered_rate": p["offered_rate"], "rps": p["throughput_rps"], "rows_per_s": p["rows_per_s"],
            "p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"], "p99.9_ms": lat["p99.9"],
            "cpu_us_per_request": cpu.get("us_per_request"), "server_cores": cpu.get("cores"),
            "client_cores": (p.get("client_cpu") or {}).get("cores"),
            "mean_batch_size": st.get("mean_batch_size"), "batch_sizes": st.get("batch_sizes"),
            "queue_us_mean": st.get("queue_us_mean"), "errors": p["error_count"],
            "error_messages": p.get("error_messages") or {},
            "checks": f"{p['checks']['checked'] - p['checks']['failed']}/{p['checks']['checked']}",
            "send_lag_p99_ms": (p.get("send_lag_ms") or {}).get("p99")}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def target(figure: str, value: float | None, op: str, bound: float, unit: str = "×",
           kind: str = "target") -> dict[str, Any]:
    """``kind`` "target": a bound the issue sets; "objective": the configured SLO, shown for reference."""
    met = None if value is None else (value <= bound if op == "<=" else value >= bound)
    return {"figure": figure, "value": value, "op": op, "bound": bound, "unit": unit, "met": met, "kind": kind}


def summarise(runs: dict[str, Any], inproc: dict[str, Any] | None, meta: dict[str, Any]) -> dict[str, Any]:
    on, off, plain, ad = runs.get("on"), runs.get("off"), runs.get("plain"), runs.get("adaptive")
    unary = {"on": row("skewless, batching on", find_point(on, "closed", CLIENTS)),
             "off": row("skewless, batching off", find_point(off, "closed", CLIENTS)),
             "echo": row("echo server (transport ceiling)", find_point(runs.get("echo"), "closed", CLIENTS))}
    stream = {"skewless": row("skewless, batching on", find_point(runs.get("on_stream"), "closed", CLIENTS, True)),
              "echo": row("echo server", find_point(runs.get("echo_stream"), "closed", CLIENTS, True))}
    streams = {"skewless": row("skewless, batching on", find_point(runs.get("on_streams"), "closed", CLIENTS, True)),
               "echo": row("echo server", find_point(runs.get("echo_streams"), "closed", CLIENTS, True))}
    single = {"on": row("skewless, batching on", find_point(on, "closed", 1)),
              "off": row("skewless, batching off", find_point(off, "closed", 1))}
    # The rate the open-loop points are percentages of: the 64-client closed loop's (main() derives the offered
    # rates from it). Not the highest closed-loop rate: on a loaded machine the 1-client point can beat it.
    top = find_point(on, "closed", CLIENTS) if on else None
    max_rate = top["throughput_rps"] if top else None
    # The open-loop points of both runs in order, both given the same rates (from the batching-on run).
    opened = [p for p in plain["points"] if p["mode"] == "open"] if plain else []
    opened_ad = [p for p in ad["points"] if p["mode"] == "open"] if ad else []
    echo_open = runs.get("echo_open")
    opened_echo = [p for p in echo_open["points"] if p["mode"] == "open"] if echo_open else []
    open_loop = []
    for i, pct in enumerate(RATE_PERCENTS):
        pt = opened[i] if i < len(opened) else None
        open_loop.append({"percent": pct, "offered_rate": pt["offered_rate"] if pt else None,
                          "without": row("without adaptive", pt),
                          "adaptive": row(f"adaptive (SLO {SLO_MS:g} ms)",
                                          opened_ad[i] if i < len(opened_ad) else None),
                          "echo": row("echo server", opened_echo[i] if i < len(opened_echo) else None)})
    heavy_row = row("skewless", find_point(runs.get("heavy"), "closed", HEAVY_CLIENTS))
    heavy = {"skewless": heavy_row, "inprocess": inproc,
             "fraction": ratio(heavy_row.get("rows_per_s"), (inproc or {}).get("rows_per_s"))}

    def v(r: dict[str, Any], key: str) -> float | None:
        return r.get(key)

    targets = [
        target("64 clients unary: CPU/request, skewless (batching on) ÷ echo",
               ratio(v(unary["on"], "cpu_us_per_request"), v(unary["echo"], "cpu_us_per_request")), "<=", 1.15),
        target("64 clients unary: requests/s, skewless (batching on) ÷ echo",
               ratio(v(unary["on"], "rps"), v(unary["echo"], "rps")), ">=", 0.90),
        target("64 in flight, stream: CPU/request, skewless ÷ echo stream",
               ratio(v(stream["skewless"], "cpu_us_per_request"), v(stream["echo"], "cpu_us_per_request")),
               "<=", 1.2),
        target("64 in flight: skewless stream req/s ÷ skewless unary req/s",
               ratio(v(stream["skewless"], "rps"), v(unary["on"], "rps")), ">=", 2.0),
        target("64 streams × 1: CPU/request, skewless ÷ echo streams",
               ratio(v(streams["skewless"], "cpu_us_per_request"), v(streams["echo"], "cpu_us_per_request")),
               "<=", 1.2),
        target("64 streams × 1: skewless stream req/s ÷ skewless unary req/s",
               ratio(v(streams["skewless"], "rps"), v(unary["on"], "rps")), ">=", 2.0),
        target("1 client: p50 batching on ÷ off", ratio(v(single["on"], "p50_ms"), v(single["off"], "p50_ms")),
               "<=", 1.0),
        target("1 client: p99 batching on ÷ off", ratio(v(single["on"], "p99_ms"), v(single["off"], "p99_ms")),
               "<=", 1.0),
    ]
    for o in open_loop:
        targets.append(target(f"open loop {o['percent']}%: p99 with adaptive vs its objective",
                              o["adaptive"].get("p99_ms"), "<=", SLO_MS, " ms", kind="objective"))
    targets.append(target("heavy MLP: rows/s through skewless ÷ in-process onnxruntime", heavy["fraction"],
                          ">=", 0.85))
    return {"title": meta["title"], "unary64": unary, "stream64": stream, "streams64": streams,
            "single_client": single,
            "max_rate_rps": max_rate, "open_loop": open_loop, "heavy": heavy, "targets": targets,
            "notes": meta["notes"]}


# -- table -------------------------------------------------------------------------------------------------
def _f(v: Any, spec: str = ".2f") -> str:
    return report._fmt(v, spec)


def _mlp_line(label: str, r: dict[str, Any]) -> str:
    if r.get("missing"):
        return f"  {label:<22}{r['name']:<33}(not measured)"
    return (f"  {label:<22}{r['name']:<33}{_f(r['rps'], '.0f'):>8}{_f(r['p50_ms'], '.2f'):>8}{_f(r['p99_ms'], '.2f'):>8}"
            f"{_f(r['cpu_us_per_request'], '.0f'):>8}{_f(r['mean_batch_size']):>7}{r['errors']:>6}{r['checks']:>10}")


def format_table(s: dict[str, Any]) -> str:
    out = [s["title"],
           f"example MLP (FP32 [n,32] -> [n,2]), 1 row/request{'':<25}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
           f"{'µs/req':>8}{'batch':>7}{'err':>6}{'checks':>10}"]
    u, st, one = s["unary64"], s["stream64"], s["single_client"]
    out += [_mlp_line(f"{CLIENTS} clients, unary", u["on"]), _mlp_line("", u["off"]), _mlp_line("", u["echo"]),
            _mlp_line(f"{CLIENTS} in flight, stream", st["skewless"]), _mlp_line("", st["echo"]),
            _mlp_line(f"{CLIENTS} streams × 1", s["streams64"]["skewless"]), _mlp_line("", s["streams64"]["echo"]),
            _mlp_line("1 client, unary", one["on"]), _mlp_line("", one["off"])]
    for key, what in (("unary", f"{CLIENTS} clients unary"), ("stream", "stream"),
                      ("streams", f"{CLIENTS} streams × 1")):
        r = (s.get("rounds") or {}).get(key)
        if r:
            cells = ", ".join(f"{_f(x['cpu_ratio'])}×/{_f(x['rps_ratio'])}×" for x in r["rounds"])
            out.append(f"  {what}, skewless ÷ echo CPU/req and req/s per alternating round: {cells} "
                       f"(shown: round {r['chosen'] + 1}, the median CPU ratio)")
    r = (s.get("rounds") or {}).get("single")
    if r:
        cells = ", ".join(f"{_f(x['p50_ratio'])}×/{_f(x['p99_ratio'])}×" for x in r["rounds"])
        out.append(f"  1 client, batching on ÷ off p50 and p99 per alternating round: {cells} "
                   f"(shown: round {r['chosen'] + 1}, the median p50 ratio)")
    out.append(f"open loop (Poisson, unary) at % of the 64-client closed-loop rate, {_f(s['max_rate_rps'], '.0f')} req/s "
               f"(batching on); without = no objective (Triton's semantics), adaptive = {SLO_PARAMETER} {SLO_MS:g}")
    out.append(f"  {'load':<6}{'offered/s':>10} |{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'batch':>7}{'err':>7} "
               f"|{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'batch':>7}{'err':>7} |{'p99 ms':>8}")
    out.append(f"  {'':<16} |{'without adaptive':^37} |{'adaptive':^37} |{'echo':>8}")
    for o in s["open_loop"]:
        cells = []
        for r in (o["without"], o["adaptive"]):
            cells.append("(not measured)".center(37) if r.get("missing") else
                         f"{_f(r['rps'], '.0f'):>7}{_f(r['p50_ms']):>8}{_f(r['p99_ms']):>8}"
                         f"{_f(r['mean_batch_size']):>7}{r['errors']:>7}")
        echo = o.get("echo") or {"missing": True}
        floor = "-" if echo.get("missing") else _f(echo["p99_ms"])
        out.append(f"  {o['percent']:>3}%  {_f(o['offered_rate'], '.0f'):>10} |{cells[0]} |{cells[1]} |{floor:>8}")
    h = s["heavy"]
    hr, ip = h["skewless"], h["inprocess"] or {}
    layers = "->".join(str(n) for n in HEAVY_LAYERS)
    out.append(f"compute-heavy MLP {layers} FP32, {HEAVY_ROWS} rows/request, {HEAVY_CLIENTS} clients, unary "
               f"({s['heavy_config']})")
    if hr.get("missing"):
        out.append("  skewless: not measured")
    else:
        sizes = ", ".join(f"{k}×{v}" for k, v in sorted((hr.get("batch_sizes") or {}).items(),
                                                        key=lambda kv: -int(kv[0]) * kv[1])[:5])
        out.append(f"  skewless: {_f(hr['rows_per_s'], '.0f')} rows/s ({_f(hr['rps'], '.0f')} req/s), "
                   f"p50 {_f(hr['p50_ms'])} ms, p99 {_f(hr['p99_ms'])} ms, mean batch "
                   f"{_f(hr['mean_batch_size'], '.1f')} rows, {_f(hr['cpu_us_per_request'], '.0f')} µs CPU/req, "
                   f"errors {hr['errors']}, checks {hr['checks']}")
        out.append(f"  batches formed (rows×count, top 5): {sizes or '-'}")
    if ip:
        per = ", ".join(f"{k} rows: {v['rows_per_s']:.0f} rows/s ({v['ms_per_batch']:.2f} ms)"
                        for k, v in ip["sizes"].items())
        out.append(f"  onnxruntime in-process, 1 caller, at those sizes: {_f(ip['rows_per_s'], '.0f')} rows/s  "
                   f"[{per}]")
    out.append(f"  skewless ÷ in-process: {_f(h['fraction'], '.1%')}")
    out.append("targets (the open-loop lines compare with the configured objective)")
    for t in s["targets"]:
        sign = "≤" if t["op"] == "<=" else "≥"
        val = "-" if t["value"] is None else f"{t['value']:.2f}{t['unit']}"
        words = ("met", "MISSED") if t["kind"] == "target" else ("within", "over")
        verdict = "n/a" if t["met"] is None else words[0 if t["met"] else 1]
        bound = f"{sign} {t['bound']:g}{t['unit']}"
        out.append(f"  {t['figure']:<66}{val:>10}  {bound:<9}{verdict}")
    out += s["notes"]
    return "\n".join(out)


# -- plot --------------------------------------------------------------------------------------------------
def plot(s: dict[str, Any], runs: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")

    def log_ms_axis(ax) -> None:
        """A log y axis labelled with plain numbers (milliseconds), minor ticks included."""
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)

    fig, axes = plt.subplots(2, 3, figsize=(18, 10))

    ax = axes[0][0]
    series = [("on", False, "skewless, batching on", "C0"), ("off", False, "skewless, batching off", "C1"),
              ("plain", False, "skewless, without adaptive", "C6"),
              ("adaptive", False, f"skewless, adaptive (SLO {SLO_MS:g} ms)", "C3"),
              ("echo", False, "echo server", "C2"), ("on_stream", True, "skewless, stream", "C4"),
              ("echo_stream", True, "echo server, stream", "C5"),
              ("on_streams", True, f"skewless, {CLIENTS} streams", "C8"),
              ("echo_streams", True, f"echo server, {CLIENTS} streams", "C9")]
    for key, stream, name, color in series:
        res = runs.get(key)
        if not res:
            continue
        for mode, marker in (("closed", "o"), ("open", "s")):
            pts = sorted((p for p in res["points"] if p["mode"] == mode and p["stream"] == stream
                          and p["latency_ms"]["p99"] is not None), key=lambda p: p["throughput_rps"])
            if not pts:
                continue
            xs, ys = [p["throughput_rps"] for p in pts], [p["latency_ms"]["p99"] for p in pts]
            ax.plot(xs, ys, marker + ("-" if mode == "open" else ""), color=color, label=f"{name} ({mode} loop)")
            for p, x, y in zip(pts, xs, ys, strict=True):
                ax.annotate(f"c={p['concurrency']}" if mode == "closed" else f"{p['offered_rate']:.0f}/s", (x, y),
                            textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.axhline(SLO_MS, color="grey", ls=":", lw=1)
    log_ms_axis(ax)
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("p99 latency (ms, log)")
    ax.set_title("example MLP: throughput vs p99")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")

    def bars(ax, labels, vals, title, ylabel, fmt="{:.0f}", colors=None, extra=None):
        vals = [v if v is not None else 0 for v in vals]
        b = ax.bar(range(len(vals)), vals, color=colors or [f"C{i}" for i in range(len(vals))])
        ax.set_xticks(range(len(vals)), labels, fontsize=8)
        for i, (rect, v) in enumerate(zip(b, vals, strict=True)):
            text = fmt.format(v) + (extra[i] if extra else "")
            ax.annotate(text, (rect.get_x() + rect.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, (max(vals) or 1) * 1.18)  # room for the labels above the bars
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)

    u, st = s["unary64"], s["stream64"]
    cpu_rows = [("skewless\nbatching on\nunary", u["on"]), ("skewless\nbatching off\nunary", u["off"]),
                ("echo\nunary", u["echo"]), ("skewless\nstream", st["skewless"]), ("echo\nstream", st["echo"]),
                (f"skewless\n{CLIENTS} streams", s["streams64"]["skewless"]),
                (f"echo\n{CLIENTS} streams", s["streams64"]["echo"])]
    colors = ["C0", "C1", "C2", "C0", "C2", "C0", "C2"]
    bars(axes[0][1], [n for n, _ in cpu_rows], [r.get("cpu_us_per_request") for _, r in cpu_rows],
         f"{CLIENTS} clients / in flight: server CPU per request", "CPU µs per request (user+sys)", colors=colors)
    bars(axes[0][2], [n for n, _ in cpu_rows], [r.get("rps") for _, r in cpu_rows],
         f"{CLIENTS} clients / in flight: throughput", "requests/s", colors=colors,
         extra=[f"\np99 {_f(r.get('p99_ms'))} ms" for _, r in cpu_rows])

    ax = axes[1][0]
    one = s["single_client"]
    width = 0.38
    for k, (key, name) in enumerate((("on", "batching on"), ("off", "batching off"))):
        vals = [one[key].get("p50_ms") or 0, one[key].get("p99_ms") or 0]
        b = ax.bar([i + (k - 0.5) * width for i in range(2)], vals, width, label=name)
        for rect, v in zip(b, vals, strict=True):
            ax.annotate(f"{v:.2f}", (rect.get_x() + rect.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(2), ["p50", "p99"])
    ax.set_ylim(0, max(one[k].get("p99_ms") or 0 for k in ("on", "off")) * 1.15 or 1)
    ax.set_ylabel("latency (ms)")
    ax.set_title("1 client, unary: batching on vs off")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[1][1]
    ol = s["open_loop"]
    for k, (key, name) in enumerate((("without", "without adaptive"), ("adaptive", f"adaptive (SLO {SLO_MS:g} ms)"))):
        vals = [o[key].get("p99_ms") or 0 for o in ol]
        b = ax.bar([i + (k - 0.5) * width for i in range(len(ol))], vals, width, label=name)
        for rect, v in zip(b, vals, strict=True):
            ax.annotate(f"{v:.3g}", (rect.get_x() + rect.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.axhline(SLO_MS, color="grey", ls=":", lw=1, label=f"objective {SLO_MS:g} ms")
    ax.set_xticks(range(len(ol)), [f"{o['percent']}%\n{_f(o['offered_rate'], '.0f')}/s" for o in ol])
    log_ms_axis(ax)
    ax.set_ylabel("p99 latency (ms, log)")
    ax.set_title("open loop (Poisson) at % of max rate: p99")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)

    h = s["heavy"]
    ip = h["inprocess"] or {}
    bars(axes[1][2], ["skewless\n(served)", "onnxruntime\nin-process\n(1 caller)"],
         [h["skewless"].get("rows_per_s"), ip.get("rows_per_s")],
         f"heavy MLP, {HEAVY_ROWS} rows/req, {HEAVY_CLIENTS} clients: {_f(h['fraction'], '.1%')} of in-process",
         "rows/s", colors=["C0", "C3"],
         extra=[f"\nbatch {_f(h['skewless'].get('mean_batch_size'), '.0f')} rows", ""])
    fig.suptitle(s["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def choose_round(runs: dict[str, Any], ours: str, theirs: str, n: int, clients: int = CLIENTS) -> dict[str, Any]:
    """Of ``n`` alternating rounds ``{ours}_r{i}`` / ``{theirs}_r{i}``, keep the one with the median ratio
    as ``runs[ours]`` / ``runs[theirs]``; returns every round's ratios and the one chosen. The ratio ranked is
    CPU per request, or p50 latency for a single client (whose CPU per request is mostly idle polling)."""
    per = []
    key = "cpu_ratio" if clients > 1 else "p50_ratio"
    for i in range(n):
        a = find_point(runs[f"{ours}_r{i}"], "closed", clients, "stream" in ours)
        b = find_point(runs[f"{theirs}_r{i}"], "closed", clients, "stream" in theirs)
        cpu = ratio((a.get("server_cpu") or {}).get("us_per_request"), (b.get("server_cpu") or {}).get("us_per_request"))
        per.append({"round": i, "cpu_ratio": cpu, "rps_ratio": ratio(a["throughput_rps"], b["throughput_rps"]),
                    "p50_ratio": ratio(a["latency_ms"]["p50"], b["latency_ms"]["p50"]),
                    "p99_ratio": ratio(a["latency_ms"]["p99"], b["latency_ms"]["p99"])})
    ranked = sorted(per, key=lambda r: math.inf if r[key] is None else r[key])
    chosen = ranked[(len(ranked) - 1) // 2]["round"]
    runs[ours], runs[theirs] = dict(runs[f"{ours}_r{chosen}"]), dict(runs[f"{theirs}_r{chosen}"])
    return {"rounds": per, "chosen": chosen}


def failed(point: dict[str, Any]) -> bool:
    """A wrong reply, or an error other than an open loop's overload (an offered rate beyond what the server
    sustains leaves requests unanswered at the end, or over the client's outstanding limit)."""
    if point["checks"]["failed"]:
        return True
    errors = point.get("errors") or {}
    if point["mode"] == "open":
        errors = {code: n for code, n in errors.items() if code not in OVERLOAD_ERRORS}
    return bool(sum(errors.values()))


# -- the run -----------------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.batching_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, help="measured seconds per point (default 8; 1.5 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 2; 0.5 with --quick)")
    p.add_argument("--quick", action="store_true", help="short points, for a smoke run")
    p.add_argument("--rounds", type=int, default=5,
                   help="alternating rounds (skewless/echo at 64 clients, batching on/off at 1 client); the "
                        "round with the median ratio is reported")
    p.add_argument("--processes", type=int, default=1,
                   help="client processes (they share the machine's cores with the servers)")
    p.add_argument("--model-repository", default=str(EXAMPLE_MODELS),
                   help="where the example mlp (config.pbtxt, 1/model.onnx) is copied from")
    p.add_argument("--heavy-preferred", type=_ints, default=[256, 512], metavar="N[,N...]",
                   help="preferred_batch_size of the heavy model (default 256,512)")
    p.add_argument("--heavy-delay-us", type=int, default=2000,
                   help="max_queue_delay_microseconds of the heavy model (default 2000)")
    p.add_argument("--out", help="output directory (default benchmarks/results/batching-<timestamp>)")
    args = p.parse_args(argv)
    duration = args.duration or (1.5 if args.quick else 8.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    out = Path(args.out or RESULTS_DIR / f"batching-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    try:
        with report.sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="skewless-batching-") as tmp:
            return _run(args, duration, warmup, out, Path(tmp), t_start)
    except KeyboardInterrupt:
        log("interrupted; every server started was stopped")
        raise


def _run(args: argparse.Namespace, duration: float, warmup: float, out: Path, tmp: Path, t_start: float) -> int:
    src = Path(args.model_repository) / MODEL
    mlp_onnx = src / "1" / "model.onnx"
    configs = {v: mlp_config(src, v) for v in ("on", "off", "plain", "adaptive")}
    repos = {v: make_repository(tmp / f"mlp_{v}", MODEL, mlp_onnx, c) for v, c in configs.items()}
    heavy_onnx = build_heavy_onnx(tmp / "heavy.onnx")
    configs["heavy"] = heavy_config(args.heavy_preferred, args.heavy_delay_us)
    repos["heavy"] = make_repository(tmp / "heavy", HEAVY, heavy_onnx, configs["heavy"])
    (out / "configs").mkdir(exist_ok=True)
    for v, c in configs.items():
        (out / "configs" / f"{v}.pbtxt").write_text(c)

    runs: dict[str, Any] = {}
    # rounds of (on, off) at 1 client, rounds of (on, echo, on stream, echo stream, on and echo over 64
    # streams) at 64; off at 64; echo
    # open loop; plain, adaptive: open loop; heavy
    points_total = 8 * args.rounds + 1 + len(RATE_PERCENTS) + 2 * len(RATE_PERCENTS) + 1
    done = [0]

    def bench(key: str, target: str, pid: int, model: str = MODEL, concurrency: list[int] | None = None,
              rates: list[str] | None = None, stream: bool = False, rows: int = 1,
              onnx: Path | None = mlp_onnx, streams: int = 1) -> dict[str, Any]:
        n = len(concurrency or []) + len(rates or [])
        log(f"{key}: {n} point(s) of {warmup:g}+{duration:g} s "
            f"({done[0]}/{points_total} done, {time.monotonic() - t_start:.0f} s elapsed)")
        cfg = BenchConfig(target=target, model=model, concurrency=concurrency or [], rates=rates or [],
                          stream=stream, streams=streams, processes=args.processes, duration=duration, warmup=warmup,
                          server_pid=pid, rows=rows, check_against_onnx=str(onnx) if onnx else None,
                          out=str(out / key), plot=False, label=f"batching {key}")
        runs[key] = run_bench(cfg)
        done[0] += n
        return runs[key]

    log(f"skewless, example MLP with batching on (as in {src / 'config.pbtxt'}) and off, and the echo server, "
        f"alternating in {args.rounds} round(s)")
    # The ratios are the headline: the points compared alternate so that both sides sample the same spells of
    # a shared machine's noise, and the round with the median ratio is the one reported. The three servers
    # run side by side (an idle one costs no CPU).
    with start_skewless(repos["on"], out / "skewless_on.log") as srv, start_echo(out / "echo.log") as echo, \
            start_skewless(repos["off"], out / "skewless_off.log") as off:
        for i in range(args.rounds):
            bench(f"on_single_r{i}", srv.target, srv.pid, concurrency=[1])
            bench(f"off_single_r{i}", off.target, off.pid, concurrency=[1])
        for i in range(args.rounds):
            bench(f"on_r{i}", srv.target, srv.pid, concurrency=[CLIENTS])
            bench(f"echo_r{i}", echo.target, echo.pid, concurrency=[CLIENTS], onnx=None)
            bench(f"on_stream_r{i}", srv.target, srv.pid, concurrency=[CLIENTS], stream=True)
            bench(f"echo_stream_r{i}", echo.target, echo.pid, concurrency=[CLIENTS], stream=True, onnx=None)
            bench(f"on_streams_r{i}", srv.target, srv.pid, concurrency=[CLIENTS], stream=True, streams=CLIENTS)
            bench(f"echo_streams_r{i}", echo.target, echo.pid, concurrency=[CLIENTS], stream=True, onnx=None,
                  streams=CLIENTS)
        off64 = bench("off", off.target, off.pid, concurrency=[CLIENTS])
        rounds = {"single": choose_round(runs, "on_single", "off_single", args.rounds, clients=1),
                  "unary": choose_round(runs, "on", "echo", args.rounds),
                  "stream": choose_round(runs, "on_stream", "echo_stream", args.rounds),
                  "streams": choose_round(runs, "on_streams", "echo_streams", args.rounds)}
        on = runs["on"]
        on["points"] = [*runs["on_single"]["points"], *on["points"]]
        runs["off"] = {**off64, "points": [*runs["off_single"]["points"], *off64["points"]]}
        top = find_point(on, "closed", CLIENTS)["throughput_rps"]
        rates = [str(top * pct / 100) for pct in RATE_PERCENTS]
        # The same offered rates against the echo server: the p99 floor of this client and machine.
        bench("echo_open", echo.target, echo.pid, rates=rates, onnx=None)
    log("skewless, example MLP without the adaptive mode (Triton's semantics)")
    with start_skewless(repos["plain"], out / "skewless_plain.log") as srv:
        bench("plain", srv.target, srv.pid, rates=rates)
    log(f"skewless, example MLP, adaptive mode ({SLO_PARAMETER} = {SLO_MS:g})")
    with start_skewless(repos["adaptive"], out / "skewless_adaptive.log") as srv:
        bench("adaptive", srv.target, srv.pid, rates=rates)
    log(f"skewless, heavy MLP {'->'.join(map(str, HEAVY_LAYERS))}, {HEAVY_ROWS} rows/request")
    with start_skewless(repos["heavy"], out / "skewless_heavy.log") as srv:
        heavy = bench("heavy", srv.target, srv.pid, model=HEAVY, concurrency=[HEAVY_CLIENTS], rows=HEAVY_ROWS,
                      onnx=heavy_onnx)
    hp = heavy["points"][0]
    formed = {int(k): v for k, v in ((hp.get("server_stats") or {}).get("batch_sizes") or {}).items()}
    if not formed:  # no per-size statistics: the mean, rounded to whole requests
        mean = (hp.get("server_stats") or {}).get("mean_batch_size") or HEAVY_ROWS
        formed = {max(HEAVY_ROWS, int(round(mean / HEAVY_ROWS)) * HEAVY_ROWS): 1}
    sizes = chosen_sizes(formed)
    base_s = min(duration, 6.0)
    log(f"onnxruntime in-process, 1 caller, batch sizes {sorted(sizes)} ({base_s:g} s in all)")
    inproc = inprocess_rows_per_s(heavy_onnx, configs["heavy"], sizes, base_s)
    inproc["sizes_formed"] = {str(k): v for k, v in sorted(formed.items())}
    covered = sum(s * c for s, c in sizes.items()) / max(1, sum(s * c for s, c in formed.items()))
    inproc["rows_covered"] = covered

    wall = time.monotonic() - t_start
    notes = [
        "µs/req: the server process tree's user+sys CPU time ÷ requests answered in the window; batch: rows per "
        "model execution (ModelStatistics); checks: replies spot-checked (values vs onnxruntime for skewless); "
        "err in the open loop: overload (requests still unanswered at the end, or past the client's outstanding "
        "limit) when the offered rate is beyond what that server sustains.",
        f"open loop: latency from each request's scheduled Poisson arrival; without = the example config "
        f"minus {SLO_PARAMETER} (Triton's semantics, delay 0), adaptive = {SLO_PARAMETER}={SLO_MS:g} (waits up to "
        f"{SLO_MS / 2:g} ms, a budget tuned from in-server latency, while other clients are seen sending; "
        f"caps batches by their compute time); echo: the bare echo server at the same offered rates, the p99 "
        f"floor of this client on this machine.",
        f"heavy in-process: session options as the server derives them; the mix weighs each size's time by the "
        f"batches the server formed ({covered:.0%} of the rows it ran).",
        f"client: {args.processes} process(es) on the same machine as the servers ({os.cpu_count()} CPUs, "
        f"shared); {duration:g} s measured + {warmup:g} s warm-up per point; run took {wall:.0f} s.",
    ]
    heavy_desc = (f"max_batch_size {HEAVY_MAX_BATCH}, preferred {args.heavy_preferred}, delay "
                  f"{args.heavy_delay_us} µs, 1 instance")
    meta = {"title": f"batching: one run {datetime.now():%Y-%m-%d %H:%M} on {platform.node()} "
                     f"({os.cpu_count()} CPUs), client processes {args.processes}", "notes": notes}
    summary = summarise(runs, inproc, meta)
    summary["rounds"] = rounds
    summary["heavy_config"] = heavy_desc
    table = format_table(summary)
    result = {"tool": "skewless batching_report", "format": 1, "summary": summary, "runs": runs,
              "inprocess_heavy": inproc, "configs": configs, "wall_s": wall,
              "config": {"duration": duration, "warmup": warmup, "processes": args.processes, "quick": args.quick,
                         "model_repository": args.model_repository, "heavy_preferred": args.heavy_preferred,
                         "heavy_delay_us": args.heavy_delay_us, "argv": sys.argv},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "node": platform.node(),
                          "python": platform.python_version()}}
    (out / "batching.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "batching.txt").write_text(table + "\n")
    plot(summary, runs, out / "batching.png")
    print(table)
    print(f"wrote {out / 'batching.json'}, {out / 'batching.png'}, {out / 'batching.txt'}")
    bad = any(failed(pt) for res in runs.values() for pt in res["points"])
    return 1 if bad else 0


if __name__ == "__main__":
    exit_on_interrupt(main)

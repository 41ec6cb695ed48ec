"""The queue-delay and spinning figures of issue 28, from one run (``latency_report --delay-spinning``).

One client, closed loop, gRPC, the peer table's models (peers.py):

- ``mlp_small`` served by skewless with ``dynamic_batching { max_queue_delay_microseconds: 200 }`` against the
  same model with ``dynamic_batching { }``: p50 and server CPU per request. The goal: p50 within 0.25 ms
  and CPU per request within 1.1x of the no-delay configuration.
- ``heavy_mlp`` (64 rows per request, ``dynamic_batching { }``) served by skewless against the naive server
  (naive_server.py): p50. The goal: skewless at or below the naive server.

Writes delay_spinning.json and delay_spinning.txt under the output directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
from datetime import datetime
from pathlib import Path
from typing import Any

from .peers import MODELS, PEERS, build_models, measure, start_peer


def _one(peer: str, model, onnx: dict[str, Path], tmp: Path, out: Path, args: argparse.Namespace,
         label: str) -> dict[str, Any]:
    with start_peer(PEERS[peer], [model], onnx, tmp / label, out / f"{label}.log", None) as srv:
        (row,) = measure(PEERS[peer], model, "grpc", srv, onnx[model.name], args, out / label)
    return {"name": label, **row}


def run(out: Path, duration: float, warmup: float) -> tuple[dict[str, Any], str]:
    """Measure the four configurations one after the other; returns the result and its table."""
    small, heavy = MODELS["mlp_small"], MODELS["heavy_mlp"]
    small_nodelay = dataclasses.replace(small, max_queue_delay_us=0)
    tmp = out / "work"
    onnx = build_models([small, heavy], tmp)
    args = argparse.Namespace(clients=[1], processes=1, duration=duration, warmup=warmup)
    rows = [
        _one("skewless", small, onnx, tmp, out, args, "skewless mlp_small delay 200us"),
        _one("skewless", small_nodelay, onnx, tmp, out, args, "skewless mlp_small dynamic_batching {}"),
        _one("skewless", heavy, onnx, tmp, out, args, "skewless heavy_mlp"),
        _one("naive", heavy, onnx, tmp, out, args, "naive heavy_mlp"),
    ]
    by = {r["name"]: r for r in rows}
    d, n = by["skewless mlp_small delay 200us"], by["skewless mlp_small dynamic_batching {}"]
    sh, nh = by["skewless heavy_mlp"], by["naive heavy_mlp"]
    notes = []
    if d["p50_ms"] is not None and n["p50_ms"] is not None:
        notes.append(f"200 us delay vs none, 1 client: p50 {d['p50_ms'] - n['p50_ms']:+.3f} ms (goal <= +0.25)")
    if d["cpu_us_per_request"] and n["cpu_us_per_request"]:
        notes.append(f"200 us delay vs none, 1 client: CPU/request "
                     f"{d['cpu_us_per_request'] / n['cpu_us_per_request']:.2f}x (goal <= 1.10x)")
    if sh["p50_ms"] is not None and nh["p50_ms"] is not None:
        notes.append(f"heavy_mlp, 1 client: skewless p50 {sh['p50_ms']:.3f} ms vs naive {nh['p50_ms']:.3f} ms "
                     f"(goal: at or below)")
    lines = [f"delay and spinning, 1 client, gRPC, one run {datetime.now():%Y-%m-%d %H:%M} on "
             f"{platform.node()} ({os.cpu_count()} CPUs); {duration:g} s + {warmup:g} s warm-up per point",
             f"{'configuration':<42} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'errors':>7}"]
    for r in rows:
        cpu = r["cpu_us_per_request"]
        lines.append(f"{r['name']:<42} {r['rps']:>8.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
                     f"{(f'{cpu:.0f}' if cpu else '-'):>11} {r['errors']:>7}")
    lines += [f"- {x}" for x in notes]
    table = "\n".join(lines)
    result = {"rows": rows, "notes": notes, "config": {"duration": duration, "warmup": warmup}}
    (out / "delay_spinning.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "delay_spinning.txt").write_text(table + "\n")
    return result, table

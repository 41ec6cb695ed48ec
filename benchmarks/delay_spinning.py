"""The queue-delay and spinning figures of issue 28, from one run (``latency_report --delay-spinning``).

One client, closed loop, gRPC, the peer table's models (peers.py):

- ``mlp_small`` served by skewless with ``dynamic_batching { max_queue_delay_microseconds: 200 }`` against the
  same model with ``dynamic_batching { }``: p50 and server CPU per request. The goal: p50 within 0.25 ms
  and CPU per request within 1.1x of the no-delay configuration.
- ``heavy_mlp`` (64 rows per request, ``dynamic_batching { }``) served by skewless, by skewless with its old
  defaults (``skewless.intra_op_spinning: during_run``, ``skewless.idle_inline_us: 0``: before bounded
  spinning and idle inline runs) and by the naive server (naive_server.py): p50. The goal: skewless at or
  below the naive server.

The figures compared are paired: every server is up for the whole run and the client (grpc.aio on uvloop,
as the load generator's) alternates between the servers of a comparison in short slices (order reversed
every round), so a machine that slows down for a while slows all of them alike. A reply per slice is
checked against onnxruntime run here. Writes
delay_spinning.json, delay_spinning.txt and delay_spinning.png under the output directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .loadgen import process_tree_cpu
from .peers import INPUT, MODELS, PEERS, Model, build_models, start_peer
from .report import latency_summary

SERVICE = "/inference.GRPCInferenceService/ModelInfer"
# The defaults before bounded spinning and idle inline runs: the "before" of the heavy model's figures.
OLD_DEFAULTS = ('parameters { key: "skewless.intra_op_spinning" value { string_value: "during_run" } }\n'
                'parameters { key: "skewless.idle_inline_us" value { string_value: "0" } }\n')


@dataclasses.dataclass
class Config:
    name: str
    peer: str
    model: Model
    extra_config: str = ""


def _configs() -> tuple[list[Config], list[list[str]]]:
    small, heavy = MODELS["mlp_small"], MODELS["heavy_mlp"]
    small_nodelay = dataclasses.replace(small, max_queue_delay_us=0)
    configs = [
        Config("skewless mlp_small delay 200us", "skewless", small),
        Config("skewless mlp_small dynamic_batching {}", "skewless", small_nodelay),
        Config("skewless heavy_mlp", "skewless", heavy),
        Config("skewless heavy_mlp old defaults", "skewless", heavy, OLD_DEFAULTS),
        Config("naive heavy_mlp", "naive", heavy),
    ]
    groups = [[c.name for c in configs[:2]], [c.name for c in configs[2:]]]
    return configs, groups


def _start(c: Config, onnx: dict[str, Path], tmp: Path, out: Path):
    return start_peer(PEERS[c.peer], [c.model], onnx, tmp / c.name, out / f"{c.name}.log", None, c.extra_config)


class _Target:
    """One server of the run: its raw ModelInfer call, the request, the expected reply and what was measured."""

    def __init__(self, c: Config, srv: Any, onnx_path: Path):
        import grpc
        import onnxruntime as ort

        from skewless.protos import grpc_service_pb2 as pb

        self.config, self.pid = c, srv.pid
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
        self.call = self.channel.unary_unary(SERVICE)  # bytes in, bytes out: the client costs the same everywhere
        x = np.random.default_rng(7).standard_normal((c.model.rows, c.model.layers[0]), dtype=np.float32)
        req = pb.ModelInferRequest(model_name=c.model.name)
        req.inputs.add(name=INPUT, datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.tobytes())
        self.request = req.SerializeToString()
        self.expected = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
            None, {INPUT: x})[0]
        self.parse = pb.ModelInferResponse.FromString
        self.latencies: list[float] = []
        self.slice_p50_ms: list[float] = []
        self.seconds = self.cpu_s = 0.0
        self.errors = self.checked = self.check_failed = 0

    async def check(self) -> None:
        reply = self.parse(await self.call(self.request, timeout=30))
        got = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(self.expected.shape)
        self.checked += 1
        if not np.allclose(got, self.expected, rtol=1e-4, atol=1e-5):
            self.check_failed += 1

    async def run_slice(self, seconds: float, record: bool = True) -> None:
        import grpc

        lat: list[float] = []
        cpu0, t0 = process_tree_cpu(self.pid), time.perf_counter()
        end = t0 + seconds
        while True:
            a = time.perf_counter()
            try:
                await self.call(self.request, timeout=30)
            except grpc.RpcError:
                self.errors += 1
            b = time.perf_counter()
            lat.append(b - a)
            if b >= end:
                break
        if record:
            self.seconds += b - t0
            self.cpu_s += process_tree_cpu(self.pid) - cpu0
            self.latencies += lat
            self.slice_p50_ms.append(float(np.median(lat)) * 1e3)

    def row(self) -> dict[str, Any]:
        lat = latency_summary(np.array(self.latencies))
        n = lat["count"]
        return {"name": self.config.name, "peer": self.config.peer, "model": self.config.model.name, "clients": 1,
                "requests": n, "rps": n / self.seconds if self.seconds else 0.0,
                "p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"],
                "cpu_us_per_request": self.cpu_s / n * 1e6 if n else None,
                "errors": self.errors, "checked": self.checked, "check_failed": self.check_failed,
                "slice_p50_ms": self.slice_p50_ms}


def _wins(a: list[float], b: list[float]) -> int:
    """Rounds in which ``a``'s slice p50 was below ``b``'s."""
    return sum(x < y for x, y in zip(a, b, strict=True))


def _notes(by: dict[str, dict[str, Any]]) -> list[str]:
    d, n = by["skewless mlp_small delay 200us"], by["skewless mlp_small dynamic_batching {}"]
    sh, dr, nh = by["skewless heavy_mlp"], by["skewless heavy_mlp old defaults"], by["naive heavy_mlp"]
    rounds = len(sh["slice_p50_ms"])
    notes = []
    if d["p50_ms"] is not None and n["p50_ms"] is not None:
        notes.append(f"200 us delay vs none, 1 client: p50 {d['p50_ms'] - n['p50_ms']:+.3f} ms (goal <= +0.25)")
    if d["cpu_us_per_request"] and n["cpu_us_per_request"]:
        notes.append(f"200 us delay vs none, 1 client: CPU/request "
                     f"{d['cpu_us_per_request'] / n['cpu_us_per_request']:.2f}x (goal <= 1.10x)")
    if sh["p50_ms"] is not None and nh["p50_ms"] is not None:
        notes.append(f"heavy_mlp, 1 client: skewless p50 {sh['p50_ms']:.3f} ms vs naive {nh['p50_ms']:.3f} ms, "
                     f"skewless lower in {_wins(sh['slice_p50_ms'], nh['slice_p50_ms'])} of {rounds} rounds "
                     f"(goal: at or below)")
    if sh["p50_ms"] is not None and dr["p50_ms"] is not None:
        notes.append(f"heavy_mlp, 1 client: skewless p50 {sh['p50_ms']:.3f} ms vs its old defaults "
                     f"{dr['p50_ms']:.3f} ms, lower in {_wins(sh['slice_p50_ms'], dr['slice_p50_ms'])} of "
                     f"{rounds} rounds; CPU/request {sh['cpu_us_per_request']:.0f} vs "
                     f"{dr['cpu_us_per_request']:.0f} us")
    return notes


def _plot(rows: list[dict[str, Any]], groups: list[list[str]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {r["name"]: r for r in rows}
    fig, axes = plt.subplots(1, len(groups), figsize=(13, 4.8))
    for ax, group in zip(axes, groups, strict=True):
        for name in group:
            r = by[name]
            ax.plot(range(1, len(r["slice_p50_ms"]) + 1), r["slice_p50_ms"], "o-", ms=3,
                    label=f"{name}: p50 {r['p50_ms']:.3f} ms, {r['cpu_us_per_request']:.0f} us CPU/req")
        ax.set_xlabel("round (each server one slice per round, alternating order)")
        ax.set_ylabel("p50 of the slice (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(by[group[0]]["model"] + ", 1 client")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


async def _measure(configs: list[Config], groups: list[list[str]], servers: dict[str, Any],
                   onnx: dict[str, Path], targets: dict[str, _Target], rounds: int, slice_s: float,
                   warmup: float) -> None:
    try:
        for c in configs:
            targets[c.name] = t = _Target(c, servers[c.name], onnx[c.model.name])
            await t.run_slice(warmup, record=False)
        for i in range(rounds):
            for group in groups:
                for name in group if i % 2 == 0 else reversed(group):
                    await targets[name].check()
                    await targets[name].run_slice(slice_s)
                    await asyncio.sleep(0.05)  # the previous server's idle spin (naive: onnxruntime's ~40 ms) ends
            print(f"round {i + 1}/{rounds}: " + ", ".join(
                f"{n} {t.slice_p50_ms[-1]:.3f}" for n, t in targets.items()), file=sys.stderr, flush=True)
    finally:
        for t in targets.values():
            await t.channel.close()


def run(out: Path, duration: float, warmup: float) -> tuple[dict[str, Any], str]:
    """``duration`` measured seconds per configuration, in 1 s slices (shorter if the duration is); returns
    the result and its table."""
    configs, groups = _configs()
    slice_s = min(1.0, duration)
    rounds = max(2, math.ceil(duration / slice_s))
    tmp = out / "work"
    onnx = build_models([MODELS["mlp_small"], MODELS["heavy_mlp"]], tmp)
    targets: dict[str, _Target] = {}
    with contextlib.ExitStack() as stack:
        servers = {c.name: stack.enter_context(_start(c, onnx, tmp, out)) for c in configs}
        try:
            import uvloop
        except ImportError:
            asyncio.run(_measure(configs, groups, servers, onnx, targets, rounds, slice_s, warmup))
        else:
            uvloop.run(_measure(configs, groups, servers, onnx, targets, rounds, slice_s, warmup))
    rows = [targets[c.name].row() for c in configs]
    notes = _notes({r["name"]: r for r in rows})
    head = (f"delay and spinning, 1 client, gRPC, one run {datetime.now():%Y-%m-%d %H:%M} on "
            f"{platform.node()} ({os.cpu_count()} CPUs); {rounds} alternating rounds of {slice_s:g} s per "
            f"configuration, {warmup:g} s warm-up")
    lines = [head,
             f"{'configuration':<42} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'errors':>7}"]
    for r in rows:
        cpu = r["cpu_us_per_request"]
        lines.append(f"{r['name']:<42} {r['rps']:>8.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
                     f"{(f'{cpu:.0f}' if cpu else '-'):>11} {r['errors']:>7}")
    lines += [f"- {x}" for x in notes]
    table = "\n".join(lines)
    result = {"rows": rows, "notes": notes, "groups": groups,
              "config": {"duration": duration, "warmup": warmup, "rounds": rounds, "slice_s": slice_s}}
    (out / "delay_spinning.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "delay_spinning.txt").write_text(table + "\n")
    _plot(rows, groups, out / "delay_spinning.png", head)
    return result, table

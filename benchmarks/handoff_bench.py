"""What handing a batch to a worker thread costs the awaiting coroutine: ``loop.run_in_executor`` on a
ThreadPoolExecutor (the server's hand-off before) against ``Handoff.to_thread`` (server/batching/handoff.py).

One process on uvloop (``--loop asyncio`` for the standard loop), one worker thread each; the job is
``--work-us`` of busy work (default 900 µs, about a heavy-MLP batch), one at a time with a short idle sleep
between jobs, as at one client. The overhead of a call is its round trip as the coroutine sees it minus the
time the job itself ran on the worker thread (measured there), so it holds both wake-ups and the result's
way back. The two hand-offs alternate over ``--rounds`` rounds so that both sample the same spells of a
shared machine's noise; reported: each round's p50 and p90, and the median of the rounds' p50s.

    python -m skewless.benchmarks.handoff_bench                     # --rounds 12 --calls 800
    python -m skewless.benchmarks.handoff_bench --quick             # a smoke run

Writes handoff.json (and handoff.png with matplotlib) under ``--out`` (default
benchmarks/results/handoff-<timestamp>).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from skewless.server.batching.handoff import Handoff

from .loadgen import RESULTS_DIR

MODES = ("run_in_executor", "handoff")


def busy(work_ns: int) -> int:
    """Spin for ``work_ns`` (holding the GIL, as a batch's Python parts do); returns the ns it ran."""
    t0 = time.perf_counter_ns()
    end = t0 + work_ns
    while time.perf_counter_ns() < end:
        pass
    return time.perf_counter_ns() - t0


async def one_round(hand_off: Callable[..., Any], calls: int, work_ns: int, idle_s: float) -> np.ndarray:
    """Overhead (µs) of each of ``calls`` hand-offs: the awaited round trip minus the job's own time."""
    out = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter_ns()
        ran_ns = await hand_off(busy, work_ns)
        out[i] = (time.perf_counter_ns() - t0 - ran_ns) / 1e3
        await asyncio.sleep(idle_s)  # idle between jobs, as a lone client's requests are
    return out


async def measure(rounds: int, calls: int, work_us: float, idle_us: float) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1, thread_name_prefix="bench-pool")
    lean = Handoff(1, "bench-handoff")
    hand_offs = {"run_in_executor": lambda fn, *a: loop.run_in_executor(pool, fn, *a),
                 "handoff": lean.to_thread}
    work_ns = round(work_us * 1e3)
    for mode in MODES:  # warm both threads up
        await one_round(hand_offs[mode], 50, work_ns, idle_us / 1e6)
    rows = []
    for rnd in range(rounds):
        order = MODES if rnd % 2 == 0 else MODES[::-1]
        for mode in order:
            us = await one_round(hand_offs[mode], calls, work_ns, idle_us / 1e6)
            p50, p90 = np.percentile(us, [50, 90])
            rows.append({"round": rnd, "mode": mode, "calls": calls, "p50_us": float(p50),
                         "p90_us": float(p90), "mean_us": float(us.mean())})
            print(f"round {rnd} {mode:16s} p50 {p50:6.1f} us  p90 {p90:6.1f} us", flush=True)
    pool.shutdown()
    lean.shutdown()
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode, the median over rounds of the round p50 and p90; and the difference of the medians."""
    out: dict[str, Any] = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        out[mode] = {"p50_us": statistics.median(r["p50_us"] for r in mine),
                     "p90_us": statistics.median(r["p90_us"] for r in mine)}
    out["saved_p50_us"] = out["run_in_executor"]["p50_us"] - out["handoff"]["p50_us"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=12, help="alternate the two hand-offs this many times")
    p.add_argument("--calls", type=int, default=800, help="hand-offs per round and mode")
    p.add_argument("--work-us", type=float, default=900.0, help="busy work per job (µs)")
    p.add_argument("--idle-us", type=float, default=500.0, help="idle sleep between jobs (µs)")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--quick", action="store_true", help="2 rounds of 200 calls")
    p.add_argument("--out", help="output directory (default benchmarks/results/handoff-<timestamp>)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.calls = 2, 200
    coro = measure(args.rounds, args.calls, args.work_us, args.idle_us)
    if args.loop == "uvloop":
        import uvloop

        rows = uvloop.run(coro)
    else:
        rows = asyncio.run(coro)
    s = summary(rows)
    result = {"rows": rows, "summary": s,
              "config": {"rounds": args.rounds, "calls": args.calls, "work_us": args.work_us,
                         "idle_us": args.idle_us, "loop": args.loop, "python": platform.python_version(),
                         "host": platform.node(), "cpus": os.cpu_count(),
                         "when": f"{datetime.now():%Y-%m-%d %H:%M}"}}
    out = Path(args.out or RESULTS_DIR / f"handoff-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "handoff.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"hand-off overhead around {args.work_us:g} us of work, {args.loop}, "
          f"median of {args.rounds} rounds' p50: "
          f"run_in_executor {s['run_in_executor']['p50_us']:.1f} us, Handoff {s['handoff']['p50_us']:.1f} us "
          f"({s['saved_p50_us']:.1f} us less)")
    try:
        _plot(rows, s, out / "handoff.png", args.loop, args.work_us)
    except ImportError:
        print("matplotlib is not installed: no PNG")
    print(f"wrote {out / 'handoff.json'}")
    return 0


def _plot(rows: list[dict[str, Any]], s: dict[str, Any], path: Path, loop: str, work_us: float) -> None:
    """Each round's p50 and p90 per hand-off, with the median of the p50s as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for mode, color in zip(MODES, ("tab:red", "tab:blue"), strict=True):
        mine = [r for r in rows if r["mode"] == mode]
        rounds = [r["round"] for r in mine]
        ax.plot(rounds, [r["p50_us"] for r in mine], "o-", color=color, label=f"{mode} p50")
        ax.plot(rounds, [r["p90_us"] for r in mine], "x:", color=color, label=f"{mode} p90")
        ax.axhline(s[mode]["p50_us"], color=color, alpha=0.3)
    ax.set_xlabel("round")
    ax.set_ylabel("overhead per hand-off (µs)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"hand-off to a worker thread around {work_us:g} µs of work ({loop}): "
                 f"{s['saved_p50_us']:.0f} µs less at p50")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

"""The peer table: skewless next to Triton, MLServer, KServe, a naive server and an echo, on the same models.

Every peer is started here as a subprocess on 127.0.0.1 and free ports, serves the same two ONNX models
(built here from fixed seeds) with the same batching configuration, and is driven by the load generator's
closed-loop client at each of ``--clients`` over gRPC and, where the peer speaks it, HTTP/REST (JSON):

- ``mlp_small``: 32->64->64->2 FP32, 1 row/request, ``max_batch_size 256``,
  ``dynamic_batching { max_queue_delay_microseconds: 200 }`` (the config a Triton user brings);
- ``heavy_mlp``: 256->1024->1024->10 FP32, 64 rows/request, ``max_batch_size 512``, ``dynamic_batching { }``.

Peers: ``skewless`` (this install), ``triton`` (Triton through PyTriton: the Python backend calls
onnxruntime in the PyTriton process), ``mlserver`` (1.7.1, a custom onnxruntime runtime, adaptive batching
with the same size and delay), ``kserve`` (0.21 ModelServer; it has no in-process batcher), ``naive``
(``naive_server.py``: grpc.aio + onnxruntime on the event loop, gRPC only) and ``echo`` (``echo_server.py``:
the grpc.aio transport ceiling, no model). Triton, MLServer and KServe each get their own venv under
``--venv-dir`` (default ``~/.cache/skewless-peers/<peer>``), built with pip on first use and reused after;
``peer_servers.py`` launches them. A peer whose venv cannot be built, or that does not start, is listed as
skipped with the reason.

Per point: requests/s, p50/p99 ms, and server CPU µs per request (the server's process tree, children such as
tritonserver or MLServer's workers included, user+sys over the measured window ÷ requests answered).
Writes peers.json, peers.png and peers.txt into --out and prints the table.

    python -m skewless.benchmarks.peers                                  # every peer, 8 s points, ~12 min
    python -m skewless.benchmarks.peers --quick --peers skewless,naive,echo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from . import report
from .batching_report import build_heavy_onnx, make_repository
from .http_client import HttpOptions, http_worker_main
from .loadgen import RESULTS_DIR, BenchConfig, run_bench
from .servers import ServerProcess, exit_on_interrupt, start_echo, start_skewless
from .workload import ModelInfo, Tensor, build_workload

PEER_SERVERS = Path(__file__).resolve().with_name("peer_servers.py")
DEFAULT_VENV_DIR = Path.home() / ".cache" / "skewless-peers"
TRANSPORTS = ("grpc", "rest")
INPUT, OUTPUT = "input", "logits"


@dataclass(frozen=True)
class Model:
    name: str
    layers: tuple[int, ...]
    rows: int  # per request
    max_batch_size: int
    max_queue_delay_us: int  # 0: dynamic_batching { }
    seed: int


MODELS = {
    "mlp_small": Model("mlp_small", (32, 64, 64, 2), 1, 256, 200, seed=11),
    "heavy_mlp": Model("heavy_mlp", (256, 1024, 1024, 10), 64, 512, 0, seed=3),
}


@dataclass(frozen=True)
class Peer:
    name: str
    title: str
    packages: tuple[str, ...] = ()  # pip requirements of its own venv; empty: runs from this environment
    transports: tuple[str, ...] = TRANSPORTS
    checked: bool = True  # replies spot-checked against onnxruntime (the echo's fixed reply is not)
    note: str = ""


PEERS = {p.name: p for p in (
    Peer("skewless", "skewless (this install)"),
    Peer("triton", "Triton (PyTriton 0.7, Python backend)", ("nvidia-pytriton==0.7.0", "onnxruntime", "numpy"),
         note="the Python backend hands each batch to onnxruntime in the PyTriton process"),
    Peer("mlserver", "MLServer 1.7.1", ("mlserver==1.7.1", "uvloop<0.22", "onnxruntime", "numpy"),
         note="custom onnxruntime runtime; adaptive batching with the same max size and delay (MLServer "
              "turns batching off at a zero delay, so the heavy model runs unbatched); inference in one parallel "
              "worker process (uvloop<0.22 for it)"),
    Peer("kserve", "KServe 0.21 ModelServer", ("kserve==0.21.0", "onnxruntime"),
         note="no in-process batcher (KServe batches in a sidecar agent); it binds every interface (no host "
              "option), on free ports"),
    Peer("naive", "naive grpc.aio + onnxruntime", transports=("grpc",),
         note="benchmarks/naive_server.py: the session runs on the event loop, no batching"),
    Peer("echo", "grpc.aio echo, no model", transports=("grpc",), checked=False,
         note="benchmarks/echo_server.py: a fixed reply of the model's size"),
)}


class PeerSkipped(Exception):
    """A peer that cannot be measured here: its venv did not build, or it did not start."""


def log(msg: str) -> None:
    print(f"[peers {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# -- venvs -------------------------------------------------------------------------------------------------
def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(peer: Peer, root: Path, show_progress: bool = True) -> Path:
    """The peer's venv python, creating the venv with pip on first use; reused while its packages and this
    Python's version match what built it (a marker file written only after pip succeeded)."""
    venv = root / peer.name
    marker = venv / "skewless-peer.json"
    want = {"packages": list(peer.packages), "python": platform.python_version()}
    try:
        if json.loads(marker.read_text()) == want and venv_python(venv).exists():
            return venv_python(venv)
    except (OSError, ValueError):
        pass
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / f"{peer.name}-pip.log"
    what = f"pip install {' '.join(peer.packages)}" if peer.packages else "no packages"
    log(f"{peer.name}: building its venv in {venv} ({what}; log {log_path})")
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)]]
    if peer.packages:
        steps.append([str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check",
                      *peer.packages])
    with open(log_path, "w") as out:
        for argv in steps:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            # Unbuffered: pip's lines reach the terminal as they happen, not in 8 KiB blocks.
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            assert proc.stdout is not None
            last = ""
            for raw in proc.stdout:
                line = raw.decode(errors="replace")
                out.write(line)
                if line.strip():
                    last = line.strip()
                if show_progress:
                    sys.stderr.write(f"  {peer.name} | {line}")
            if proc.wait():
                raise PeerSkipped(f"venv build failed ({argv[2] if argv[1] == '-m' else argv[0]} exited "
                                  f"{proc.returncode}): {last[:300]}; see {log_path}")
    marker.write_text(json.dumps(want) + "\n")
    return venv_python(venv)


# -- models ------------------------------------------------------------------------------------------------
def triton_config(m: Model) -> str:
    from google.protobuf import text_format

    from skewless.protos import model_config_pb2 as mc

    cfg = mc.ModelConfig(name=m.name, platform="onnxruntime_onnx", max_batch_size=m.max_batch_size)
    cfg.input.add(name=INPUT, data_type=mc.TYPE_FP32, dims=[m.layers[0]])
    cfg.output.add(name=OUTPUT, data_type=mc.TYPE_FP32, dims=[m.layers[-1]])
    cfg.dynamic_batching.SetInParent()
    if m.max_queue_delay_us:
        cfg.dynamic_batching.max_queue_delay_microseconds = m.max_queue_delay_us
    return text_format.MessageToString(cfg)


def peer_spec(m: Model) -> dict[str, Any]:
    """What peer_servers.py needs to serve a model (it cannot read config.pbtxt without Triton's protos)."""
    return {"input": INPUT, "output": OUTPUT, "input_width": m.layers[0], "output_width": m.layers[-1],
            "max_batch_size": m.max_batch_size, "max_queue_delay_us": m.max_queue_delay_us}


def build_models(models: list[Model], tmp: Path) -> dict[str, Path]:
    return {m.name: build_heavy_onnx(tmp / "onnx" / f"{m.name}.onnx", m.layers, m.seed) for m in models}


def peer_model_dir(models: list[Model], onnx: dict[str, Path], root: Path) -> Path:
    for m in models:
        (root / m.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx[m.name], root / m.name / "model.onnx")
        (root / m.name / "peer.json").write_text(json.dumps(peer_spec(m)))
    return root


def workload(m: Model, onnx_path: Path | None):
    info = ModelInfo(m.name, "", "onnxruntime_onnx", [Tensor(INPUT, "FP32", (-1, m.layers[0]))],
                     [Tensor(OUTPUT, "FP32", (-1, m.layers[-1]))])
    return build_workload(info, m.rows, 16, onnx_path=str(onnx_path) if onnx_path else None)


# -- starting peers ----------------------------------------------------------------------------------------
def start_peer(peer: Peer, models: list[Model], onnx: dict[str, Path], tmp: Path, log_path: Path,
               python: Path | None, extra_config: str = "") -> ServerProcess:
    """One server for ``models`` (naive and echo take one model each); its stderr goes to ``log_path``.
    ``extra_config``: config.pbtxt text appended to each model's config (skewless only)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if peer.name == "skewless":
        repo = tmp / "skewless_repo"
        for m in models:
            make_repository(repo, m.name, onnx[m.name], triton_config(m) + extra_config)
        return start_skewless(repo, log_path)
    if peer.name == "echo":
        (m,) = models
        return start_echo(log_path, model=m.name, extra=["--input-width", str(m.layers[0]), "--reply-rows",
                                                         str(m.rows), "--reply-width", str(m.layers[-1])])
    if peer.name == "naive":
        (m,) = models
        argv = [sys.executable, "-m", "skewless.benchmarks.naive_server", "--host", "127.0.0.1", "--port", "0",
                "--model-file", str(onnx[m.name])]
        return ServerProcess(argv, re.compile(r"NAIVE_READY (?P<port>\d+)"), log_path)
    assert python is not None
    root = peer_model_dir(models, onnx, tmp / f"{peer.name}_models")
    argv = [str(python), str(PEER_SERVERS), peer.name, "--models", str(root)]
    return ServerProcess(argv, re.compile(r"PEER_READY grpc=[^:]+:(?P<port>\d+)"), log_path, timeout=300.0)


def log_tail(path: Path, lines: int = 3) -> str:
    """The last lines of a server's stderr: where the cause of a failed start is (a traceback's last line)."""
    try:
        tail = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()][-lines:]
    except OSError:
        return ""
    return f"; its log ends: {' | '.join(x[:300] for x in tail)}" if tail else ""


def one_server_per_model(peer: Peer) -> bool:
    return peer.name in ("naive", "echo")


# -- measuring ---------------------------------------------------------------------------------------------
def measure(peer: Peer, m: Model, transport: str, srv: ServerProcess, onnx_path: Path,
            args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    wl = workload(m, onnx_path if peer.checked else None)
    check_every = 100 if peer.checked else 0
    cfg = BenchConfig(target=srv.target, model=m.name, concurrency=list(args.clients), processes=args.processes,
                      duration=args.duration, warmup=args.warmup, rows=m.rows, check_every=check_every,
                      server_pid=srv.pid, out=str(out / "points" / f"{peer.name}-{m.name}-{transport}"),
                      plot=False, label=f"peers {peer.name} {m.name} {transport}")
    if transport == "rest":
        rest = srv.addresses.get("rest")
        if not rest:
            raise RuntimeError(f"{peer.name} named no HTTP/REST endpoint on its ready line")
        opts = HttpOptions(rest, encoding="json", timeout=cfg.timeout, check_every=check_every)
        result = run_bench(cfg, wl, worker=http_worker_main, options=opts)
    else:
        result = run_bench(cfg, wl)
    rows = []
    for p in result["points"]:
        f = report.point_figures(p)
        rows.append({"peer": peer.name, "model": m.name, "transport": transport, **f,
                     "checks_ok": f["checked"] - f["check_failed"]})
    return rows


def run_peers(args: argparse.Namespace, out: Path, tmp: Path) -> dict[str, Any]:
    models = [MODELS[n] for n in args.models]
    onnx = build_models(models, tmp)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for name in args.peers:
        peer = PEERS[name]
        try:
            python = ensure_venv(peer, args.venv_dir, not args.quiet_pip) if peer.packages else None
        except (PeerSkipped, OSError) as exc:
            skipped.append({"peer": name, "reason": str(exc)})
            log(f"{name}: skipped: {exc}")
            continue
        groups = [[m] for m in models] if one_server_per_model(peer) else [models]
        for group in groups:
            what = f"{name} ({', '.join(m.name for m in group)})"
            log(f"{what}: starting")
            log_path = out / "logs" / f"{name}-{'+'.join(m.name for m in group)}.log"
            try:
                srv = start_peer(peer, group, onnx, tmp, log_path, python)
            except (RuntimeError, OSError) as exc:
                reason = f"did not start: {exc}{log_tail(log_path)}"
                skipped.append({"peer": name, "models": ",".join(m.name for m in group), "reason": reason})
                log(f"{what}: skipped, {reason}")
                continue
            with srv:
                for m in group:
                    for transport in (t for t in args.transports if t in peer.transports):
                        log(f"{name} {m.name} {transport}: clients {args.clients}")
                        try:
                            rows += measure(peer, m, transport, srv, onnx[m.name], args, out)
                        except Exception as exc:  # a peer that fails mid-run is reported, never a crash
                            skipped.append({"peer": name, "models": m.name, "transport": transport,
                                            "reason": f"{type(exc).__name__}: {exc}"})
                            log(f"{name} {m.name} {transport}: failed: {type(exc).__name__}: {exc}")
    return {"rows": rows, "skipped": skipped}


# -- table -------------------------------------------------------------------------------------------------
def cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    f = report._fmt
    err = f" ({r['errors']} err)" if r["errors"] else ""
    return (f"{f(r['rps'], '.0f')} · {f(r['p50_ms'])} · {f(r['p99_ms'])} · "
            f"{f(r['cpu_us_per_request'], '.0f')}{err}")


def format_table(s: dict[str, Any]) -> str:
    clients = s["config"]["clients"]
    out = [s["title"], "cells: req/s · p50 ms · p99 ms · server CPU µs/request (closed loop)"]
    by = {(r["peer"], r["model"], r["transport"], r["clients"]): r for r in s["rows"]}
    for mname in s["config"]["models"]:
        m = MODELS[mname]
        for transport in s["config"]["transports"]:
            peers = [p for p in s["config"]["peers"] if any(k[:3] == (p, mname, transport) for k in by)]
            if not peers:
                continue
            out.append("")
            out.append(f"{mname} ({'->'.join(map(str, m.layers))} FP32, {m.rows} row(s)/request, "
                       f"{'delay ' + str(m.max_queue_delay_us) + ' µs' if m.max_queue_delay_us else 'no delay'}), "
                       f"{'gRPC' if transport == 'grpc' else 'REST JSON'}")
            cells = {p: [cell(by.get((p, mname, transport, c))) for c in clients] for p in peers}
            head = [f"{c} client{'s' if c > 1 else ''}" for c in clients]
            w0 = max(len(PEERS[p].title) for p in peers)
            ws = [max(len(h), *(len(cells[p][i]) for p in peers)) for i, h in enumerate(head)]
            out.append("  " + "".ljust(w0) + " | " + " | ".join(h.ljust(w) for h, w in zip(head, ws, strict=True)))
            for p in peers:
                out.append("  " + PEERS[p].title.ljust(w0) + " | "
                           + " | ".join(c.ljust(w) for c, w in zip(cells[p], ws, strict=True)))
    bad = [r for r in s["rows"] if r["errors"]]
    for r in bad:
        out.append(f"! {r['peer']} {r['model']} {r['transport']} {r['clients']} clients: {r['errors']} errors "
                   f"{r['error_messages'] or ''}{' first wrong reply: ' + r['first_failure'] if r['first_failure'] else ''}")
    for sk in s["skipped"]:
        where = " ".join(x for x in (sk.get("models"), sk.get("transport")) if x)
        out.append(f"skipped: {sk['peer']}{' ' + where if where else ''}: {sk['reason']}")
    out += s["notes"]
    return "\n".join(out)


# -- plot --------------------------------------------------------------------------------------------------
METRICS = (("rps", "requests/s", False), ("p50_ms", "p50 ms (log)", True), ("p99_ms", "p99 ms (log)", True),
           ("cpu_us_per_request", "server CPU µs/request", False))


def plot(s: dict[str, Any], path: Path) -> Path:
    """A grid: one row per (model, transport), one column per figure; bars grouped by clients, one per peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    clients = s["config"]["clients"]
    by = {(r["peer"], r["model"], r["transport"], r["clients"]): r for r in s["rows"]}
    combos = [(m, t) for m in s["config"]["models"] for t in s["config"]["transports"]
              if any(k[1:3] == (m, t) for k in by)]
    peers = [p for p in s["config"]["peers"] if any(k[0] == p for k in by)]
    n = max(1, len(combos))
    fig, axes = plt.subplots(n, len(METRICS), figsize=(5.2 * len(METRICS), 3.6 * n), squeeze=False)
    width = 0.8 / max(1, len(peers))
    for row, (mname, transport) in enumerate(combos):
        for col, (key, label, log_scale) in enumerate(METRICS):
            ax = axes[row][col]
            for k, p in enumerate(peers):
                vals = [(by.get((p, mname, transport, c)) or {}).get(key) for c in clients]
                xs = [i + (k - (len(peers) - 1) / 2) * width for i in range(len(clients))]
                ax.bar(xs, [v or 0 for v in vals], width, color=f"C{list(PEERS).index(p)}",
                       label=PEERS[p].title if row == 0 and col == 0 else None)
                for x, v in zip(xs, vals, strict=True):
                    if v:
                        ax.annotate(f"{v:.0f}" if v >= 100 else f"{v:.3g}", (x, v), ha="center", va="bottom",
                                    fontsize=6, rotation=90)
            ax.set_xticks(range(len(clients)), [f"{c} cl." for c in clients])
            if log_scale:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.margins(y=0.25)
            ax.set_title(f"{mname}, {'gRPC' if transport == 'grpc' else 'REST'}: {label}", fontsize=9)
            ax.grid(True, axis="y", which="both", alpha=0.3)
    if combos:
        fig.legend(loc="lower center", ncol=len(peers), fontsize=9, bbox_to_anchor=(0.5, 0))
    fig.suptitle(s["title"], fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- command line ------------------------------------------------------------------------------------------
def _names(choices: dict[str, Any] | tuple[str, ...]):
    def parse(text: str) -> list[str]:
        out = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [x for x in out if x not in choices]
        if unknown or not out:
            raise argparse.ArgumentTypeError(f"unknown {unknown or 'empty list'}; choose from {', '.join(choices)}")
        return out
    return parse


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N[,N...]") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive counts")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=_names(PEERS), default=list(PEERS), metavar="P[,P...]",
                   help=f"peers to run (default all: {','.join(PEERS)})")
    p.add_argument("--models", type=_names(MODELS), default=list(MODELS), metavar="M[,M...]",
                   help=f"models (default {','.join(MODELS)})")
    p.add_argument("--transports", type=_names(TRANSPORTS), default=list(TRANSPORTS), metavar="T[,T...]",
                   help="grpc, rest or both (default both; a peer that lacks one is measured on the other)")
    p.add_argument("--clients", type=_ints, default=[1, 16, 64], metavar="N[,N...]",
                   help="closed-loop clients per point (default 1,16,64)")
    p.add_argument("--duration", type=float, help="measured seconds per point (default 8; 1 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 2; 0.5 with --quick)")
    p.add_argument("--quick", action="store_true", help="short points, for a smoke run")
    p.add_argument("--processes", type=int, default=1,
                   help="client processes (they share the machine's cores with the server)")
    p.add_argument("--venv-dir", type=Path, default=DEFAULT_VENV_DIR,
                   help=f"where each peer's venv is built and reused (default {DEFAULT_VENV_DIR}/<peer>)")
    p.add_argument("--quiet-pip", action="store_true", help="keep pip's output in the log file only")
    p.add_argument("--out", help="output directory (default benchmarks/results/peers-<timestamp>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.duration = args.duration or (1.0 if args.quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    out = Path(args.out or RESULTS_DIR / f"peers-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with report.sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="skewless-peers-") as tmp:
        measured = run_peers(args, out, Path(tmp))
    wall = time.monotonic() - t0
    notes = [f"{PEERS[p].title}: {PEERS[p].note}" for p in args.peers if PEERS[p].note] + [
        f"client: the load generator, {args.processes} process(es) on the same machine ({os.cpu_count()} CPUs); "
        f"{args.duration:g} s measured + {args.warmup:g} s warm-up per point; REST bodies are JSON; replies "
        f"spot-checked against onnxruntime (a wrong reply counts as an error); run took {wall:.0f} s."]
    summary = {"title": f"peers: one run {datetime.now():%Y-%m-%d %H:%M} on {platform.node()} "
                        f"({os.cpu_count()} CPUs)",
               "config": {"peers": args.peers, "models": args.models, "transports": args.transports,
                          "clients": args.clients, "duration": args.duration, "warmup": args.warmup,
                          "processes": args.processes, "quick": args.quick, "venv_dir": str(args.venv_dir),
                          "argv": sys.argv},
               "models": {n: {"layers": list(MODELS[n].layers), "rows_per_request": MODELS[n].rows,
                              "max_batch_size": MODELS[n].max_batch_size,
                              "max_queue_delay_us": MODELS[n].max_queue_delay_us} for n in args.models},
               "peers": {n: {"title": PEERS[n].title, "packages": list(PEERS[n].packages), "note": PEERS[n].note}
                         for n in args.peers},
               **measured, "notes": notes, "wall_s": wall,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "node": platform.node(),
                           "python": platform.python_version()}}
    table = format_table(summary)
    (out / "peers.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "peers.txt").write_text(table + "\n")
    plot(summary, out / "peers.png")
    print(table)
    print(f"wrote {out / 'peers.json'}, {out / 'peers.png'}, {out / 'peers.txt'}")
    return 1 if any(r["errors"] for r in summary["rows"]) else 0


if __name__ == "__main__":
    exit_on_interrupt(main)

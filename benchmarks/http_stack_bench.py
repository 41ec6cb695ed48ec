"""Which asyncio HTTP stack for the REST frontend: aiohttp's low-level server vs uvicorn + httptools.

Each stack serves inference on the example MLP from the same data plane and the same body codec (rest_codec)
in a server subprocess on uvloop; closed-loop clients (keep-alive ``http.client`` connections, one process
each) send Triton binary-tensor requests of ``--rows`` rows. Reported per stack and client count: requests/s
and the server's CPU µs per request (user+sys of its process over the window), the steadier figure on a shared
machine. ``aiohttp`` is skewless's REST frontend (router, checks, metrics); ``aiohttp-bare`` and ``uvicorn``
run the same bare handler (no router) on each stack, so the difference between those two is the stack's own
and the difference between the first two is what the frontend adds.

    python -m skewless.benchmarks.http_stack_bench --clients 1,4 --seconds 5   # pip install uvicorn httptools first
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing as mp
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from .loadgen import RESULTS_DIR
from .servers import EXAMPLE_MODELS, ServerProcess

STACKS = ("aiohttp", "aiohttp-bare", "uvicorn")


async def _serve(stack: str) -> None:
    from skewless.server.dataplane import DataPlane
    from skewless.server.encode import output_tensors
    from skewless.server.frontend import rest_codec
    from skewless.server.frontend.http_rest import RestFrontend
    from skewless.server.models.repository import ModelRepository

    repo = ModelRepository(EXAMPLE_MODELS, "none", [], 15.0, 4)
    await repo.start()
    dp = DataPlane(repo)
    if stack == "aiohttp":
        port = await RestFrontend(dp, 2**31 - 1, 5.0).start("127.0.0.1", 0)
        print(f"HTTP_READY {port}", flush=True)
        await asyncio.Event().wait()

    async def infer(path: str, body: bytes, size: str | None) -> tuple[bytes, int | None]:
        """The bare handler both stacks run: parse, infer, encode (Triton binary tensors)."""
        req = rest_codec.parse_infer_request(body, rest_codec.header_length(size, len(body)))
        mv, names, arrays = await dp.infer_tensors(path.split("/")[3], "", req.inputs, req.raw, req.output_names,
                                                   req.output_parameters, req.parameters, req.id)
        json_size, reply = rest_codec.infer_reply(req, mv.name, mv.version_text, output_tensors(mv, names, arrays))
        return reply, json_size

    if stack == "aiohttp-bare":
        from aiohttp import web, web_server

        async def handle(request: web.BaseRequest) -> web.Response:
            reply, json_size = await infer(request.path, await request.read(),
                                           request.headers.get("Inference-Header-Content-Length"))
            headers = {"Content-Type": "application/octet-stream"}
            if json_size is not None:
                headers["Inference-Header-Content-Length"] = str(json_size)
            return web.Response(body=reply, headers=headers)

        listener = await asyncio.get_running_loop().create_server(web_server.Server(handle), "127.0.0.1", 0)
        print(f"HTTP_READY {listener.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()
    import uvicorn

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        chunks, more = [], True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        size = dict(scope["headers"]).get(b"inference-header-content-length")
        reply, json_size = await infer(scope["path"], b"".join(chunks), size.decode() if size else None)
        out = [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(reply)).encode())]
        if json_size is not None:
            out.append((b"inference-header-content-length", str(json_size).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": reply})

    config = uvicorn.Config(app, host="127.0.0.1", port=0, loop="none", http="httptools", lifespan="off",
                            access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    # Server.serve() would take over SIGINT/SIGTERM; embedding it on our loop means calling its internals.
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    port = server.servers[0].sockets[0].getsockname()[1]
    print(f"HTTP_READY {port}", flush=True)
    await asyncio.Event().wait()


def _request(rows: int) -> tuple[bytes, dict[str, str]]:
    x = np.random.default_rng(0).random((rows, 32), dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 32],
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


def _client(port: int, rows: int, start: float, stop: float, counter) -> None:
    body, headers = _request(rows)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    n = 0
    while True:
        now = time.perf_counter()
        if now >= stop:
            break
        conn.request("POST", "/v2/models/mlp/infer", body, headers)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
        if now >= start:
            n += 1
    with counter.get_lock():
        counter.value += n


def measure(port: int, pid: int, clients: int, rows: int, seconds: float, warmup: float = 1.0) -> dict:
    import psutil

    proc = psutil.Process(pid)
    counter = mp.Value("q", 0)
    t0 = time.perf_counter()
    start, stop = t0 + warmup, t0 + warmup + seconds
    workers = [mp.Process(target=_client, args=(port, rows, start, stop, counter)) for _ in range(clients)]
    for w in workers:
        w.start()
    time.sleep(max(0.0, start - time.perf_counter()))
    c0 = proc.cpu_times()
    time.sleep(max(0.0, stop - time.perf_counter()))
    c1 = proc.cpu_times()
    for w in workers:
        w.join()
    n = counter.value
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return {"clients": clients, "requests": n, "rps": n / seconds, "cpu_us_per_request": 1e6 * cpu / max(n, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    p.add_argument("--stacks", default=",".join(STACKS))
    p.add_argument("--clients", default="1,4")
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2, help="alternate the stacks this many times (noise)")
    p.add_argument("--out", help="output directory (default benchmarks/results/http-stack-<timestamp>)")
    args = p.parse_args(argv)
    if args.serve:
        import uvloop

        uvloop.run(_serve(args.serve))
        return 0
    results = []
    for rnd in range(args.rounds):
        for stack in args.stacks.split(","):
            argv = [sys.executable, "-m", "skewless.benchmarks.http_stack_bench", "--serve", stack]
            with ServerProcess(argv, re.compile(r"HTTP_READY (?P<port>\d+)")) as srv:
                for c in (int(v) for v in args.clients.split(",")):
                    r = {"stack": stack, "round": rnd, **measure(srv.port, srv.pid, c, args.rows, args.seconds)}
                    results.append(r)
                    print(f"{stack:8s} round {rnd} clients {c:3d}: {r['rps']:8.0f} req/s  "
                          f"{r['cpu_us_per_request']:6.0f} server CPU us/request", flush=True)
    out = Path(args.out or RESULTS_DIR / f"http-stack-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "http_stack.json").write_text(json.dumps(results, indent=1) + "\n")
    _plot(results, out / "http_stack.png")
    print(f"wrote {out / 'http_stack.json'}, {out / 'http_stack.png'}")
    return 0


def _plot(results: list[dict], path: Path) -> None:
    """Median over rounds of requests/s and server CPU per request, one bar per stack and client count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacks = list(dict.fromkeys(r["stack"] for r in results))
    clients = sorted({r["clients"] for r in results})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "rps", "requests/s"), (axes[1], "cpu_us_per_request", "server CPU µs/request")):
        width = 0.8 / len(stacks)
        for i, stack in enumerate(stacks):
            values = [float(np.median([r[key] for r in results if r["stack"] == stack and r["clients"] == c]))
                      for c in clients]
            bars = ax.bar(np.arange(len(clients)) + i * width, values, width, label=stack)
            ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_xticks(np.arange(len(clients)) + width * (len(stacks) - 1) / 2, [f"{c} clients" for c in clients])
        ax.set_ylabel(label)
        ax.set_title(f"{label} (median of rounds)")
        ax.legend()
    fig.suptitle("HTTP stack under the REST frontend: example MLP, binary tensors, keep-alive closed loop")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

"""The REST ceiling of rest_report.py: uvicorn + httptools on uvloop, answering every POST with a fixed reply.

The HTTP counterpart of echo_server.py (the grpc.aio echo): the fastest well-kept Python HTTP/1.1 stack, a
bare ASGI callable with no router, no body parsing and no model, replying a KServe v2 JSON body of the
model's output size. A server that serves a model over REST for less CPU per request than this does less
work per request in its HTTP stack than uvicorn itself.

    python -m skewless.benchmarks.rest_echo_server --port 0   # prints REST_ECHO_READY <port>
    (needs uvicorn and httptools: pip install 'skewless[bench]')
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys


def reply_body(model: str, output: str, rows: int, width: int) -> bytes:
    """What a model server answers for one request: fixed values, the shape of ``rows`` x ``width`` FP32."""
    data = [round(0.001 * i, 3) for i in range(rows * width)]
    return json.dumps({"model_name": model, "model_version": "1", "outputs": [
        {"name": output, "datatype": "FP32", "shape": [rows, width], "data": data}]}).encode()


def make_app(body: bytes):
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    start = {"type": "http.response.start", "status": 200, "headers": headers}
    reply = {"type": "http.response.body", "body": body}

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # the request body is read, as a server must, and dropped
            more = (await receive()).get("more_body", False)
        await send(start)
        await send(reply)

    return app


async def serve(args: argparse.Namespace) -> int:
    import uvicorn

    sock = socket.create_server((args.host, args.port))
    config = uvicorn.Config(make_app(reply_body(args.model, args.output, args.reply_rows, args.reply_width)),
                            http="httptools", loop="none", lifespan="off", access_log=False,
                            log_level="warning", backlog=2048)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # this process's own handlers stop it below
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    print(f"REST_ECHO_READY {sock.getsockname()[1]}", flush=True)
    await serving
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.rest_echo_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the ready line)")
    p.add_argument("--model", default="mlp_small")
    p.add_argument("--output", default="logits")
    p.add_argument("--reply-rows", type=int, default=1)
    p.add_argument("--reply-width", type=int, default=2)
    args = p.parse_args(argv)
    try:
        import httptools  # noqa: F401 - uvicorn's fast parser; without it the echo would not be the ceiling
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"rest_echo_server needs uvicorn and httptools ({exc.name} is missing): "
              "pip install 'skewless[bench]'", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())

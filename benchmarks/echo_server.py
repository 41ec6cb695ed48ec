"""A bare KServe v2 gRPC server that answers every inference with one fixed, pre-serialised reply.

It parses nothing (generic handlers with identity serialisers), so its cost per request is what grpc.aio
itself costs: the transport ceiling any Python server can reach, and the yardstick the batching report compares
skewless's CPU per request and throughput against. It also answers ModelMetadata for a fake model with the
example MLP's I/O (``input`` FP32 [-1,32] -> ``probabilities`` FP32 [-1,2]) so the load generator can target
it unchanged; its reply is shaped for one row, so drive it with ``--rows 1`` and without value checks.

    python -m skewless.benchmarks.echo_server --port 0     # prints "ECHO_READY <port>", stops on SIGTERM
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import grpc
import numpy as np

from skewless.protos import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
MAX_MESSAGE_BYTES = 2**31 - 1


def fixed_messages(model: str, input_width: int = 32, reply_rows: int = 1, reply_width: int = 2) -> dict[str, bytes]:
    """Every reply the server can give, serialised once. The widths and reply rows let it carry another
    model's payload (the heavy MLP's 64 x 256 in, 64 x 10 out) for a transport yardstick of that size."""
    infer = pb.ModelInferResponse(model_name=model, model_version="1")
    infer.outputs.add(name="probabilities", datatype="FP32", shape=[reply_rows, reply_width])
    infer.raw_output_contents.append(np.full((reply_rows, reply_width), 0.5, dtype="<f4").tobytes())
    md = pb.ModelMetadataResponse(name=model, versions=["1"], platform="onnxruntime_onnx")
    md.inputs.add(name="input", datatype="FP32", shape=[-1, input_width])
    md.outputs.add(name="probabilities", datatype="FP32", shape=[-1, reply_width])
    return {
        "infer": infer.SerializeToString(),
        "stream": pb.ModelStreamInferResponse(infer_response=infer).SerializeToString(),
        "metadata": md.SerializeToString(),
        "server_metadata": pb.ServerMetadataResponse(name="echo", version="0").SerializeToString(),
        "live": pb.ServerLiveResponse(live=True).SerializeToString(),
        "ready": pb.ServerReadyResponse(ready=True).SerializeToString(),
        "model_ready": pb.ModelReadyResponse(ready=True).SerializeToString(),
    }


def handler(model: str, input_width: int = 32, reply_rows: int = 1, reply_width: int = 2) -> grpc.GenericRpcHandler:
    msgs = fixed_messages(model, input_width, reply_rows, reply_width)

    def fixed(key: str) -> grpc.RpcMethodHandler:
        reply = msgs[key]

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return reply

        # None (de)serialisers: the request stays undecoded bytes and the reply goes out as is.
        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=None, response_serializer=None)

    stream_reply = msgs["stream"]

    async def stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield stream_reply

    return grpc.method_handlers_generic_handler(SERVICE, {
        "ModelInfer": fixed("infer"),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream, request_deserializer=None,
                                                                  response_serializer=None),
        "ModelMetadata": fixed("metadata"),
        "ServerMetadata": fixed("server_metadata"),
        "ServerLive": fixed("live"),
        "ServerReady": fixed("ready"),
        "ModelReady": fixed("model_ready"),
    })


async def serve(host: str, port: int, model: str, shape: tuple[int, int, int] = (32, 1, 2)) -> int:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler(model, *shape),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        print(f"echo_server: cannot bind {host}:{port}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"ECHO_READY {bound}", flush=True)
    await stop.wait()
    await server.stop(1.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.echo_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the ready line)")
    p.add_argument("--model", default="mlp", help="name the fake model answers to")
    p.add_argument("--input-width", type=int, default=32, help="features per row the fake model takes")
    p.add_argument("--reply-rows", type=int, default=1, help="rows in the fixed reply")
    p.add_argument("--reply-width", type=int, default=2, help="values per reply row")
    p.add_argument("--no-uvloop", action="store_true")
    args = p.parse_args(argv)
    coro = serve(args.host, args.port, args.model, (args.input_width, args.reply_rows, args.reply_width))
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())

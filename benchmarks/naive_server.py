"""The naive baseline of the peer table: grpc.aio + onnxruntime, ModelInfer only, about twenty lines of work.

What anyone would write in an afternoon: parse the request, run the session on the event loop, reply with
raw tensors. No batching, no validation, no statistics. A server that costs more than this per request at one
client is paying for something the caller did not ask for.

    python -m skewless.benchmarks.naive_server --model-file model.onnx --port 0   # prints NAIVE_READY <port>
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc
import numpy as np
import onnxruntime as ort

from skewless.protos import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"


async def serve(model_file: str, host: str, port: int) -> int:
    sess = ort.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]

    async def infer(req: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        feeds = {t.name: np.frombuffer(raw, dtype=np.float32).reshape(t.shape)
                 for t, raw in zip(req.inputs, req.raw_input_contents, strict=True) if t.name in inputs}
        resp = pb.ModelInferResponse(model_name=req.model_name, model_version="1", id=req.id)
        for name, arr in zip(names, sess.run(names, feeds), strict=True):
            resp.outputs.add(name=name, datatype="FP32", shape=arr.shape)
            resp.raw_output_contents.append(arr.tobytes())
        return resp

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            infer, request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelInferResponse.SerializeToString)}),))
    bound = server.add_insecure_port(f"{host}:{port}")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await server.start()
    print(f"NAIVE_READY {bound}", flush=True)
    await stop.wait()
    await server.stop(1.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.naive_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-file", required=True, help="an ONNX model with FP32 inputs and outputs")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the ready line)")
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args.model_file, args.host, args.port))
    return uvloop.run(serve(args.model_file, args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())

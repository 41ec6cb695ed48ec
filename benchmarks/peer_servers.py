"""Launchers for the peer servers of ``peers.py``, run by each peer's own venv python (never imports skewless).

    PEER_VENV/bin/python benchmarks/peer_servers.py {triton,kserve,mlserver} --models DIR

``DIR`` holds one folder per model with ``model.onnx`` and ``peer.json`` (input/output names and widths,
max batch size, queue delay in µs), written by ``peers.py``. The launcher picks free ports, starts the peer
with every model, waits until each model answers ``GET /v2/models/<name>/ready`` and prints
``PEER_READY grpc=127.0.0.1:<port> rest=127.0.0.1:<port>``; SIGTERM stops it. Every peer runs onnxruntime
on the CPU with its default session options, as a user of that peer would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def read_models(root: Path) -> list[dict]:
    return [{**json.loads((d / "peer.json").read_text()), "name": d.name, "path": str(d / "model.onnx")}
            for d in sorted(root.iterdir()) if (d / "peer.json").is_file()]


def session(path: str):
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def announce_when_ready(models: list[dict], grpc_port: int, rest_port: int, timeout: float = 240.0) -> None:
    """Print the ready line once every model says ready over REST (the peer's own readiness, not a guess)."""
    deadline = time.monotonic() + timeout
    for m in models:
        url = f"http://{HOST}:{rest_port}/v2/models/{m['name']}/ready"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                print(f"peer_servers: {url} not ready after {timeout:.0f}s", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.2)
    print(f"PEER_READY grpc={HOST}:{grpc_port} rest={HOST}:{rest_port}", flush=True)


def watch(models: list[dict], grpc_port: int, rest_port: int) -> None:
    threading.Thread(target=announce_when_ready, args=(models, grpc_port, rest_port), daemon=True).start()


# -- Triton through PyTriton (Python backend; the model runs in this process) -------------------------------
def run_triton(models: list[dict]) -> int:
    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    # Triton's Python backend stub embeds libpython from the loader's search path: on a machine whose python
    # is not the system one (pyenv, a newer patch release), the system libpython would run this stdlib and
    # fail (e.g. "'_thread.RLock' object has no attribute '_recursion_count'"). Point it at this python's own.
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and Path(libdir).is_dir():
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(x for x in (libdir, os.environ.get("LD_LIBRARY_PATH")) if x)
    grpc_port, rest_port = free_port(), free_port()
    config = TritonConfig(grpc_address=HOST, grpc_port=grpc_port, http_address=HOST, http_port=rest_port,
                          metrics_port=free_port(), allow_metrics=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Triton(config=config) as triton:
        for m in models:
            sess = session(m["path"])

            @batch
            def infer(sess=sess, m=m, **inputs):
                return {m["output"]: sess.run([m["output"]], {m["input"]: inputs[m["input"]]})[0]}

            triton.bind(model_name=m["name"], infer_func=infer,
                        inputs=[Tensor(name=m["input"], dtype=np.float32, shape=(m["input_width"],))],
                        outputs=[Tensor(name=m["output"], dtype=np.float32, shape=(m["output_width"],))],
                        config=ModelConfig(max_batch_size=m["max_batch_size"], batcher=DynamicBatcher(
                            max_queue_delay_microseconds=m["max_queue_delay_us"])),
                        strict=False)
        triton.run()
        watch(models, grpc_port, rest_port)
        stop.wait()
    return 0


# -- KServe's ModelServer (no in-process batcher: KServe batches in a sidecar agent) ------------------------
def run_kserve(models: list[dict]) -> int:
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
    from kserve.utils.utils import generate_uuid

    class OnnxModel(Model):
        def __init__(self, spec: dict):
            super().__init__(spec["name"])
            self.spec = spec
            self.sess = session(spec["path"])
            self.ready = True

        def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
            x = payload.inputs[0].as_numpy()
            y = self.sess.run([self.spec["output"]], {self.spec["input"]: x})[0]
            # Raw tensors back when they came raw (gRPC), JSON otherwise: KServe's own convention.
            binary = payload.use_binary_outputs
            out = InferOutput(name=self.spec["output"], shape=list(y.shape), datatype="FP32")
            out.set_data_from_numpy(y, binary_data=binary)
            return InferResponse(response_id=payload.id or generate_uuid(), model_name=self.name,
                                 infer_outputs=[out], use_binary_outputs=binary)

    grpc_port, rest_port = free_port(), free_port()
    watch(models, grpc_port, rest_port)
    ModelServer(http_port=rest_port, grpc_port=grpc_port, workers=1).start([OnnxModel(m) for m in models])
    return 0


# -- MLServer (a custom runtime: there is no mlserver-onnx for 1.7) ----------------------------------------
try:
    from mlserver import MLModel
except ImportError:  # this file is also run by the other peers' venvs
    MLModel = object  # type: ignore[assignment,misc]


class OnnxRuntime(MLModel):  # type: ignore[misc,valid-type]
    """MLServer runtime: one onnxruntime session; MLServer's adaptive batching merges requests before it."""

    async def load(self) -> bool:
        self.spec = json.loads(Path(self.settings.parameters.uri).with_name("peer.json").read_text())
        self.sess = session(self.settings.parameters.uri)
        return True

    async def predict(self, payload):
        from mlserver.codecs import NumpyCodec
        from mlserver.types import InferenceResponse

        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self.sess.run([self.spec["output"]], {self.spec["input"]: x})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output(self.spec["output"], y)])


def run_mlserver(models: list[dict], root: Path) -> int:
    grpc_port, rest_port = free_port(), free_port()
    settings = {"host": HOST, "http_port": rest_port, "grpc_port": grpc_port, "metrics_port": free_port(),
                "metrics_endpoint": None, "parallel_workers": 1, "load_models_at_startup": True}
    (root / "settings.json").write_text(json.dumps(settings))
    for m in models:
        ms = {"name": m["name"], "implementation": "peer_servers.OnnxRuntime",
              "parameters": {"uri": m["path"]}, "max_batch_size": m["max_batch_size"],
              "max_batch_time": m["max_queue_delay_us"] / 1e6}
        (Path(m["path"]).parent / "model-settings.json").write_text(json.dumps(ms))
    # MLServer's workers import the runtime by name: give them this file alone on their path (its own folder
    # holds report.py, client.py, ... which could shadow other packages' modules).
    runtime = root / "_runtime"
    runtime.mkdir(exist_ok=True)
    shutil.copyfile(__file__, runtime / "peer_servers.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (str(runtime), os.environ.get("PYTHONPATH")) if x)}
    mlserver = Path(sys.executable).with_name("mlserver")
    proc = subprocess.Popen([str(mlserver), "start", str(root)], env=env)
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    watch(models, grpc_port, rest_port)
    return proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("peer", choices=("triton", "kserve", "mlserver"))
    p.add_argument("--models", required=True, type=Path, help="folder of model folders written by peers.py")
    args = p.parse_args(argv)
    models = read_models(args.models)
    if args.peer == "triton":
        return run_triton(models)
    if args.peer == "kserve":
        return run_kserve(models)
    return run_mlserver(models, args.models)


if __name__ == "__main__":
    sys.exit(main())

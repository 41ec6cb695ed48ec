"""Closed-loop gRPC load on a model whose versions differ recognisably, for hot-swap checks and reports.

Version N of the model adds N to its input (:func:`add_constant_model`), so every reply can be checked
against the version it names: a reply whose outputs are not ``x + N`` for its own ``model_version`` mixed two
versions. Each client thread also checks that versions never go backwards for it (once a new version has
answered, the old one is retired and must not answer again).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np


def add_constant_model(c: float) -> bytes:
    """y = x + c on FP32 [batch, 4]: each version of a model gets its own c, so replies tell them apart."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])], "add_constant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(c, dtype=np.float32), "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass
class Reply:
    sent: float
    received: float
    version: int


@dataclass
class LoadResult:
    replies: list[Reply] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    mixed: int = 0  # replies whose outputs are not those of the version they name
    backwards: int = 0  # replies from an older version than one this client already saw

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


class SwapLoad:
    """``clients`` threads, each with its own tritonclient gRPC client, sending until stopped."""

    def __init__(self, url: str, model: str, clients: int = 64, rows: int = 1):
        self.url, self.model, self.clients, self.rows = url, model, clients, rows
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._results = [LoadResult() for _ in range(clients)]
        self._switch = sys.getswitchinterval()

    def start(self) -> SwapLoad:
        # Busy client threads hold this process's GIL nearly all the time: its other threads (the publisher,
        # an in-process S3 server) then wait up to a whole switch interval (5 ms) for every step, and a publish
        # took 20 s instead of 0.5 s. A shorter interval while the load runs lets them through.
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0002)
        for i in range(self.clients):
            t = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"swap-load-{i}")
            t.start()
            self._threads.append(t)
        return self

    def latest_version(self) -> int:
        """The newest version any client has seen answer so far."""
        return max((r.replies[-1].version for r in self._results if r.replies), default=0)

    def _run(self, i: int) -> None:
        import tritonclient.grpc as grpcclient

        out = self._results[i]
        rng = np.random.default_rng(i)
        client = grpcclient.InferenceServerClient(self.url)
        newest = 0
        try:
            while not self._stop.is_set():
                x = rng.standard_normal((self.rows, 4)).astype(np.float32)
                inp = grpcclient.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                sent = time.perf_counter()
                try:
                    res = client.infer(self.model, [inp], client_timeout=30)
                except Exception as exc:
                    key = f"{type(exc).__name__}: {str(exc)[:120]}"
                    out.errors[key] = out.errors.get(key, 0) + 1
                    continue
                received = time.perf_counter()
                v = int(res.get_response().model_version)
                if not np.array_equal(res.as_numpy("y"), x + np.float32(v)):
                    out.mixed += 1
                if v < newest:
                    out.backwards += 1
                newest = max(newest, v)
                out.replies.append(Reply(sent, received, v))
        finally:
            client.close()

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        sys.setswitchinterval(self._switch)
        total = LoadResult()
        for r in self._results:
            total.replies.extend(r.replies)
            for k, n in r.errors.items():
                total.errors[k] = total.errors.get(k, 0) + n
            total.mixed += r.mixed
            total.backwards += r.backwards
        total.replies.sort(key=lambda r: r.sent)
        return total

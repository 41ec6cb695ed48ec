"""One HTTP load-generating client process for the KServe v2 REST endpoint, driven by loadgen's ClientPool.

The client must cost far less per request than the server it measures, on a machine where the two share few
cores, so it is a bare HTTP/1.1 keep-alive client on an ``asyncio.Protocol`` (uvloop when installed): one
persistent connection per simulated client, request bytes (head and body) built once per input variant, and
per reply only the status line and length headers are read. JSON and binary tensors are decoded for the
spot-checked replies only, into a ``ModelInferResponse`` so that the gRPC load generator's ``check_reply``
judges both transports alike (against onnxruntime's outputs when the workload carries them).

Two encodings, both KServe v2 / Triton:
- ``json``: inputs as JSON ``data``, outputs asked with ``binary_data: false``;
- ``binary``: Triton's binary tensor extension both ways: ``Inference-Header-Content-Length`` says how long
  the JSON head is, each input's ``binary_data_size`` bytes follow it (raw little-endian), and outputs are
  asked with ``binary_data: true``.

It speaks the same command protocol as ``client.worker_main`` (a ``PointSpec`` in, a ``PointResult`` out),
closed loop only.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from dataclasses import dataclass

import numpy as np

from skewless.protos import grpc_service_pb2 as pb

from .client import PointResult, PointSpec, Recorder, run_worker, serve_points
from .workload import NUMPY_DTYPES, ModelInfo, Workload, to_raw

perf = time.perf_counter
ENCODINGS = ("json", "binary")


@dataclass(frozen=True)
class HttpOptions:
    target: str  # host:port of the REST endpoint
    encoding: str = "json"  # "json" or "binary" (Triton's binary tensor extension, both ways)
    timeout: float = 30.0  # seconds a point may overrun its end waiting for replies
    check_every: int = 100
    use_uvloop: bool = True
    model_version: str = ""  # "" posts to /v2/models/{m}/infer, else /v2/models/{m}/versions/{v}/infer


# -- requests ----------------------------------------------------------------------------------------------
def _json_data(arr: np.ndarray, datatype: str) -> list:
    if datatype == "BYTES":
        return [x.decode() if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
    if datatype in ("FP16", "BF16"):
        arr = arr.astype(np.float32)
    # float32 -> Python float is exact, and json writes the shortest repr that reads back to it: the server
    # gets the very values the gRPC requests carry, so onnxruntime's expected outputs apply to both.
    return arr.reshape(-1).tolist()


def infer_body(model: ModelInfo, feeds: dict[str, np.ndarray], outputs: list[str],
               encoding: str) -> tuple[bytes, int | None]:
    """The request body, and the JSON head's length when binary tensors follow it (else None)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r}: expected one of {ENCODINGS}")
    binary = encoding == "binary"
    inputs, blobs = [], []
    for t in model.inputs:
        arr = feeds[t.name]
        item: dict = {"name": t.name, "shape": list(arr.shape), "datatype": t.datatype}
        if binary:
            raw = to_raw(arr, t.datatype)
            item["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            item["data"] = _json_data(arr, t.datatype)
        inputs.append(item)
    doc = {"inputs": inputs,
           "outputs": [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]}
    head = json.dumps(doc, separators=(",", ":")).encode()
    return head + b"".join(blobs), (len(head) if binary else None)


def infer_request(host: str, path: str, body: bytes, header_length: int | None) -> bytes:
    """A complete HTTP/1.1 POST (head and body), sent as is on a keep-alive connection."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    if header_length is None:
        lines.append("Content-Type: application/json")
    else:
        lines += ["Content-Type: application/octet-stream", f"Inference-Header-Content-Length: {header_length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def infer_path(model: str, version: str = "") -> str:
    return f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"


# -- replies -----------------------------------------------------------------------------------------------
def parse_response(buf: bytearray) -> tuple[int, dict[str, str], bytes, int] | None:
    """(status, lower-cased headers, body, bytes consumed) once ``buf`` holds a whole response, else None.

    Content-Length and chunked bodies; a response with neither (read to close) is not supported: KServe
    servers answer inference with a length.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    start = end + 4
    if "content-length" in headers:
        stop = start + int(headers["content-length"])
        return (status, headers, bytes(buf[start:stop]), stop) if len(buf) >= stop else None
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts, pos = [], start
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", eol)  # the last chunk, optional trailers, a blank line
                if trailer_end < 0:
                    return None
                return status, headers, b"".join(parts), trailer_end + 4
            if len(buf) < eol + 2 + size + 2:
                return None
            parts.append(bytes(buf[eol + 2:eol + 2 + size]))
            pos = eol + 2 + size + 2
    if status in (204, 304) or 100 <= status < 200:
        return status, headers, b"", start
    raise ValueError(f"HTTP {status} reply without Content-Length or chunked encoding")


def decode_reply(headers: dict[str, str], body: bytes, encoding: str) -> tuple[pb.ModelInferResponse, str | None]:
    """A KServe v2 REST reply as a ``ModelInferResponse`` (raw little-endian bytes per output), and a problem
    when the outputs did not come back in the encoding asked for."""
    n = headers.get("inference-header-content-length")
    head_len = int(n) if n is not None else len(body)
    doc = json.loads(body[:head_len])
    resp = pb.ModelInferResponse(model_name=str(doc.get("model_name", "")),
                                 model_version=str(doc.get("model_version", "")), id=str(doc.get("id", "")))
    offset, problem = head_len, None
    for o in doc.get("outputs", []):
        name, datatype, shape = o["name"], o["datatype"], [int(d) for d in o["shape"]]
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = body[offset:offset + int(size)]
            offset += int(size)
            if encoding != "binary":
                problem = problem or f"output '{name}' came back binary; JSON data was asked for"
        else:
            if encoding == "binary":
                problem = problem or f"output '{name}' came back as JSON data; binary_data was asked for"
            data = o.get("data", [])
            if datatype == "BYTES":
                raw = to_raw(np.array([x.encode() if isinstance(x, str) else x for x in np.ravel(data)],
                                      dtype=object), "BYTES")
            else:
                raw = to_raw(np.asarray(data, dtype=NUMPY_DTYPES[datatype]).reshape(-1), datatype)
        resp.outputs.add(name=name, datatype=datatype, shape=shape)
        resp.raw_output_contents.append(raw)
    if offset != len(body):
        problem = problem or f"reply has {len(body) - offset} bytes beyond its outputs"
    return resp, problem


# -- one keep-alive connection -----------------------------------------------------------------------------
class Connection(asyncio.Protocol):
    """One request at a time; the reply completes a future as soon as its last byte arrives."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.t_send = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        w = self.waiter
        if w is None or w.done():
            return
        try:
            parsed = parse_response(self.buf)
        except Exception as exc:
            w.set_exception(exc)
            return
        if parsed is not None:
            status, headers, body, used = parsed
            del self.buf[:used]
            w.set_result((status, headers, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed by the server ({exc or 'EOF'})"))

    def request(self, raw: bytes) -> asyncio.Future:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class HttpClient:
    """One process's connections (one per simulated client, kept across points) and its request bytes."""

    def __init__(self, worker: int, opts: HttpOptions, wl: Workload, counters):
        self.worker, self.opts, self.wl, self.counters = worker, opts, wl, counters
        self.host, _, port = opts.target.rpartition(":")
        self.port = int(port)
        path = infer_path(wl.model.name, opts.model_version)
        self.requests = [infer_request(opts.target, path, *infer_body(wl.model, f, wl.output_names, opts.encoding))
                         for f in wl.feeds]
        self.conns: list[Connection | None] = []

    async def connection(self, k: int) -> Connection:
        while len(self.conns) <= k:
            self.conns.append(None)
        c = self.conns[k]
        if c is None or c.closed:
            loop = asyncio.get_running_loop()
            _, c = await asyncio.wait_for(loop.create_connection(Connection, self.host, self.port), 30)
            self.conns[k] = c
        return c

    async def check_endpoint(self) -> None:
        """Fail at start-up, with the server's words, when it does not answer one request with 200."""
        status, _, body = await (await self.connection(0)).request(self.requests[0])
        if status != 200:
            raise RuntimeError(f"POST to {self.opts.target} answered HTTP {status}: {body[:300]!r}")

    def close(self) -> None:
        for c in self.conns:
            if c is not None:
                c.close()

    async def run_point(self, spec: PointSpec) -> PointResult:
        if spec.mode != "closed" or spec.stream:
            raise ValueError("the HTTP client runs closed-loop unary points only")
        t0 = spec.t0_wall - time.time() + perf()
        t_w = t0 + spec.warmup
        t_end = t_w + spec.duration
        rec = Recorder(self.wl, t_w, t_end, self.opts.check_every, self.counters, self.worker)
        rec.publish()
        clients = int(spec.share)
        for k in range(clients):  # connect before the clock starts
            await self.connection(k)
        delay = t0 - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        ticker = asyncio.create_task(self._tick(rec))
        jobs = [asyncio.ensure_future(self._closed(rec, k, t_end)) for k in range(clients)]
        try:
            budget = max(0.0, t_end - perf()) + min(self.opts.timeout, spec.drain_timeout)
            _, late = await asyncio.wait(jobs, timeout=budget)
            for job in late:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            for k in range(clients):
                c = self.conns[k]
                if c is not None and c.waiter is not None and not c.waiter.done():
                    # Unanswered past the drain budget: counted, and the connection dropped (its reply is lost).
                    rec.error(c.t_send, "DRAIN_TIMEOUT", "still unanswered when the drain timeout ran out")
                    c.close()
                    self.conns[k] = None
        finally:
            ticker.cancel()
            rec.publish()
        return rec.result(spec, self.worker)

    async def _tick(self, rec: Recorder) -> None:
        while True:
            await asyncio.sleep(0.2)
            rec.publish()

    async def _closed(self, rec: Recorder, k: int, t_end: float) -> None:
        reqs, encoding = self.requests, self.opts.encoding
        nvar = len(reqs)
        v = k % nvar
        while True:
            t = perf()
            if t >= t_end:
                return
            if t >= rec.t_w:
                rec.sent += 1
            v = v + 1 if v + 1 < nvar else 0
            try:
                conn = await self.connection(k)
                conn.t_send = t
                status, headers, body = await conn.request(reqs[v])
            except (OSError, ValueError, asyncio.TimeoutError) as exc:  # ConnectionError is an OSError
                rec.error(t, "CONNECTION", f"{type(exc).__name__}: {exc}")
                self.conns[k] = None
                await asyncio.sleep(0.01)  # a server refusing connections must not spin this loop
                continue
            if headers.get("connection", "").lower() == "close":
                self.conns[k] = None
            if status != 200:
                rec.error(t, f"HTTP_{status}", body[:300].decode(errors="replace"))
                continue
            if rec.ok(t, perf()):
                self._check(rec, headers, body, v, encoding)

    @staticmethod
    def _check(rec: Recorder, headers: dict[str, str], body: bytes, v: int, encoding: str) -> None:
        try:
            resp, problem = decode_reply(headers, body, encoding)
        except Exception as exc:
            resp, problem = None, f"undecodable reply: {type(exc).__name__}: {exc}"
        if problem or resp is None:
            rec.checked += 1
            rec.check_failures += 1
            rec.first_failure = rec.first_failure or problem
        else:
            rec.check(resp, v)


async def _serve(worker: int, opts: HttpOptions, wl: Workload, cmd_q, res_q, counters) -> None:
    client = HttpClient(worker, opts, wl, counters)
    try:
        await client.check_endpoint()
        await serve_points(worker, client, cmd_q, res_q)
    finally:
        client.close()


def http_worker_main(worker: int, opts: HttpOptions, wl: Workload, cmd_q, res_q, counters) -> None:
    """Entry point of a spawned HTTP client process (``ClientPool(worker=...)``)."""
    run_worker(functools.partial(_serve, worker, opts, wl, cmd_q, res_q, counters), opts.use_uvloop, worker,
               res_q)

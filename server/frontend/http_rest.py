"""HTTP/REST edge: the KServe v2 REST API (plus Triton's extensions tritonclient.http calls) over the data plane.

Transport only: routes, compression, and the JSON/binary body format (rest_codec); every request check is the
data plane's, so a bad request gets the gRPC path's message. ``HTTP_STATUS`` maps domain error kinds to
Triton's HTTP codes (its ``HttpCodeFromError``: NOT_FOUND 404, UNAVAILABLE 503, UNSUPPORTED 501, INTERNAL 500,
anything else 400); one exception boundary per request turns anything unexpected into a 500 and a log line.

Stack: aiohttp's low-level server (``aiohttp.web.Server``: no router or middleware chain) on the gRPC server's
event loop (uvloop). ``benchmarks/http_stack_bench.py`` (example MLP, 1 row, binary tensors, keep-alive
clients, 2-core machine, 3 alternating rounds) measured the server CPU per request of this frontend against
uvicorn + httptools serving a bare ASGI callable (no routing) over the same codec and data plane; medians
aiohttp / uvicorn: 264 / 238 µs at 1 client, 206 / 206 µs at 4, 193 / 184 µs at 16: the same within the
machine's noise. So embedding decided: aiohttp's public ``ServerRunner`` runs on a loop it does not own,
installs no signal handlers (``handle_signals=False``) and drains in-flight requests on ``cleanup``; uvicorn's
``Server.serve`` takes over SIGINT/SIGTERM, and running it on our loop meant calling its internals.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from skewless.protos import grpc_service_pb2 as pb

from ..dataplane import DataPlane
from ..encode import SPEC_HASH_PARAM, output_tensors
from ..errors import FailedPrecondition, InvalidArgument, SkewlessError
from ..features.missing import refuse_nulls
from ..hooks import ALL_ROWS, FlaggedArrays
from ..json_depth import prune_deep_members
from ..models.overrides import FILE_PREFIX
from ..request_ids import assign_id
from ..security.guard import Guard
from ..security.http_guard import check_http
from ..shm.tensors import output_targets, write_outputs
from . import rest_codec, runtime_settings
from .raw_binary import raw_binary_request

if TYPE_CHECKING:
    from ..hooks import LabelSink, LogControl, TraceControl, Tracer

log = logging.getLogger(__name__)

# Domain error kind -> HTTP status: Triton's table where it has the code, else HTTP's own meaning.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "UNAVAILABLE": 503,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "CANCELLED": 400,  # Triton: 400
    "FAILED_PRECONDITION": 400,  # Triton has no such code and answers 400 for those
    "RESOURCE_EXHAUSTED": 429,
    "DEADLINE_EXCEEDED": 504,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
}

JSON = "application/json"
BINARY = "application/octet-stream"
HEADER_LENGTH = "Inference-Header-Content-Length"
# Compressing or decompressing more than this on the event loop would stall every other request.
OFFLOAD_BYTES = 256 * 1024
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class HttpError(SkewlessError):
    """A transport-level failure with its own status (e.g. 404, 405)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def status_of(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, HttpError):
        return exc.status, str(exc)
    if isinstance(exc, SkewlessError):
        return HTTP_STATUS.get(exc.kind, 500), str(exc)
    return 500, f"internal error: {type(exc).__name__}: {exc}"


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=rest_codec.dumps(doc), content_type=JSON)


def _empty(status: int) -> web.Response:
    return web.Response(status=status)


def message_json(msg) -> dict:
    """A protobuf message as Triton's JSON: proto field names, defaults printed, 64-bit integers as numbers
    (protobuf's JSON mapping makes them strings; Triton turns them back, and tritonclient users index them)."""
    doc = json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _int64_numbers(msg.DESCRIPTOR, doc)
    return doc


_INT64 = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)


def _int64_numbers(descriptor, doc: dict) -> None:
    for f in descriptor.fields:
        if f.name not in doc:
            continue
        value = doc[f.name]
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            vf = f.message_type.fields_by_name["value"]
            for k, v in value.items():
                if vf.message_type is not None:
                    _int64_numbers(vf.message_type, v)
                elif vf.cpp_type in _INT64:
                    value[k] = int(v)
        elif f.message_type is not None:
            for v in value if isinstance(value, list) else [value]:
                _int64_numbers(f.message_type, v)
        elif f.cpp_type in _INT64:
            doc[f.name] = [int(v) for v in value] if isinstance(value, list) else int(value)


Handler = Callable[..., Awaitable[web.StreamResponse]]
HEAD_TIMEOUT_S = 30.0


class _HeadTimedHandler(web_protocol.RequestHandler):
    """aiohttp's connection protocol, closing a connection whose request head has not arrived within
    ``head_timeout`` of the connection opening or of its previous reply (aiohttp has no such limit: a client
    sending a header line every few seconds, or nothing at all, held a connection forever: slowloris)."""

    head_timeout = HEAD_TIMEOUT_S

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self.await_head()

    def await_head(self) -> None:
        self.head_arrived()
        self._head_timer = asyncio.get_running_loop().call_later(self.head_timeout, self._head_overdue)

    def head_arrived(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.head_arrived()
        super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp logs every request its parser refuses as an ERROR with a traceback; a client's malformed HTTP
        (400, e.g. both Content-Length and Transfer-Encoding, which RFC 9112 says to treat as an error) is the
        client's mistake, like any other 400: a debug line, so a scanner cannot fill the log."""
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError) and exc.code == 400:
            self.logger.debug("malformed HTTP request refused (400): %s", exc.message)
        else:
            super().log_exception(*args, **kw)


class _Server(web.Server):
    def __init__(self, *args: Any, head_timeout: float = HEAD_TIMEOUT_S, **kw: Any):
        super().__init__(*args, **kw)
        self.head_timeout = head_timeout

    def __call__(self) -> web_protocol.RequestHandler:
        handler = _HeadTimedHandler(self, loop=self._loop, **self._kwargs)
        handler.head_timeout = self.head_timeout
        return handler


class RestFrontend:
    """The routes, over one DataPlane; ``start``/``stop`` bind and drain the listening socket."""

    def __init__(self, dataplane: DataPlane, max_body_bytes: int, grace_period_s: float,
                 tracer: Tracer | None = None, guard: Guard | None = None,
                 ssl_context: ssl.SSLContext | None = None, head_timeout_s: float = HEAD_TIMEOUT_S,
                 limit_flag: str = "--http-max-input-size"):
        self.dp = dataplane
        self.limit_flag = limit_flag  # the flag that set max_body_bytes, named by the errors that enforce it
        self.head_timeout_s = head_timeout_s
        self.guard = guard  # None: nothing to refuse (no principals, no rate limit, loopback only)
        self.ssl_context = ssl_context
        self.tracer = tracer  # headers are read for traceparent only when tracing is configured
        self.max_body_bytes = max_body_bytes
        self.grace_period_s = grace_period_s
        self._runner: web.ServerRunner | None = None
        self.lineage: LabelSink | None = None  # labels route: set by the server when the prediction log is on
        self.trace_control: TraceControl | None = None  # Triton's trace and log settings: set by the wiring
        self.log_control: LogControl | None = None
        # (method, path segments after /v2) -> handler; a "{}" segment is a path parameter.
        self._routes: list[tuple[str, tuple[str, ...], Handler]] = []
        for method, pattern, handler in (
            ("GET", "", self.server_metadata),
            ("GET", "health/live", self.live),
            ("GET", "health/ready", self.ready),
            ("GET", "models/stats", self.stats),
            ("GET", "models/{}", self.model_metadata),
            ("GET", "models/{}/versions/{}", self.model_metadata),
            ("GET", "models/{}/ready", self.model_ready),
            ("GET", "models/{}/versions/{}/ready", self.model_ready),
            ("GET", "models/{}/config", self.model_config),
            ("GET", "models/{}/versions/{}/config", self.model_config),
            ("GET", "models/{}/stats", self.stats),
            ("GET", "models/{}/versions/{}/stats", self.stats),
            ("POST", "models/{}/infer", self.infer),
            ("POST", "models/{}/versions/{}/infer", self.infer),
            ("POST", "repository/index", self.repository_index),
            ("POST", "repository/models/{}/load", self.load),
            ("POST", "repository/models/{}/unload", self.unload),
            ("POST", "models/{}/labels", self.labels),
            ("POST", "models/{}/events", self.events),
            ("POST", "models/{}/versions/{}/events", self.events),
            # Triton's trace and logging extensions (runtime_settings.py)
            ("GET", "trace/setting", self.trace_setting),
            ("POST", "trace/setting", self.trace_setting),
            ("GET", "models/{}/trace/setting", self.trace_setting),
            ("POST", "models/{}/trace/setting", self.trace_setting),
            ("GET", "logging", self.logging_settings),
            ("POST", "logging", self.logging_settings),
            *self._shm_routes(),
        ):
            self._routes.append((method, tuple(pattern.split("/")) if pattern else (), handler))

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        # auto_decompress off: Content-Encoding is checked and decoded here, with the body size limit.
        # handler_cancellation: a client that hangs up cancels its request, as a gRPC cancel does (dropped if
        # still queued, counted as cancelled, never as a success).
        server = _Server(self.handle, access_log=None, auto_decompress=False, head_timeout=self.head_timeout_s,
                         handler_cancellation=True)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=self.grace_period_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self.ssl_context, reuse_port=reuse_port or None)
        await site.start()
        return self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish (within the grace period), close connections."""
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the exception boundary ------------------------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        if isinstance(protocol, _HeadTimedHandler):
            protocol.head_arrived()
            try:
                return await self._handle(request)
            finally:
                protocol.await_head()  # the next request's head (keep-alive) must come within the limit too
        return await self._handle(request)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            if self.guard is not None:
                check_http(self.guard, request.method, request.path, request.headers.get("Authorization"),
                           request.transport, request.remote)
            handler, args = self._route(request)
            return await handler(request, *args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            status, message = status_of(exc)
            if status == 500:
                log.error("HTTP %s %s failed", request.method, request.raw_path, exc_info=exc)
            resp = _json({"error": message}, status)
            if status == 401:
                resp.headers["WWW-Authenticate"] = 'Bearer realm="skewless"'
            return resp

    def _route(self, request: web.BaseRequest) -> tuple[Handler, list[str]]:
        path = request.raw_path.split("?", 1)[0].rstrip("/")
        parts = path.split("/")[1:]
        if not parts or parts[0] != "v2":
            raise HttpError(404, f"no route for {path or '/'}: the KServe v2 API lives under /v2")
        parts = parts[1:]
        allowed = []
        for method, pattern, handler in self._routes:
            if len(pattern) != len(parts):
                continue
            args = []
            for want, got in zip(pattern, parts, strict=True):
                if want == "{}":
                    args.append(unquote(got))
                elif want != got:
                    break
            else:
                if method == request.method or (method == "GET" and request.method == "HEAD"):
                    return handler, args
                allowed.append(method)
        if allowed:
            raise HttpError(405, f"{path} accepts {', '.join(allowed)}, not {request.method}")
        raise HttpError(404, f"no route for {path}")

    # -- bodies ----------------------------------------------------------------------------------------------
    async def _body(self, request: web.BaseRequest) -> bytes:
        """The request body, decompressed per Content-Encoding (gzip, deflate), within the size limit."""
        limit, flag = self.max_body_bytes, self.limit_flag
        raw = request.headers.get(HEADER_LENGTH, "").strip() == "0"  # a raw binary request: Triton's words differ
        if request.content_length is not None and request.content_length > limit:
            raise HttpError(400, _too_large(str(request.content_length), limit, flag, raw))
        try:
            if not request.can_read_body:  # no body at all (aiohttp's empty stream refuses readexactly(0))
                body = b""
            elif request.content_length is not None:
                body = await request.content.readexactly(request.content_length)
            else:  # chunked
                chunks, size = [], 0
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > limit:
                        raise HttpError(400, _too_large(f"more than {limit}", limit, flag, raw))
                    chunks.append(chunk)
                body = b"".join(chunks)
        except asyncio.IncompleteReadError:
            raise HttpError(400, "the request body ended before its Content-Length") from None
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "identity":
            return body
        wbits = _WBITS.get(encoding)
        if wbits is None:
            raise InvalidArgument(f"unsupported Content-Encoding '{encoding}': use gzip, deflate or identity")
        if len(body) > OFFLOAD_BYTES:
            return await asyncio.get_running_loop().run_in_executor(None, _decompress, body, wbits, encoding, limit,
                                                                    flag)
        return _decompress(body, wbits, encoding, limit, flag)

    async def _json_body(self, request: web.BaseRequest, what: str, prune_deep: bool = False) -> dict:
        body = await self._body(request)
        if not body.strip():
            return {}
        doc = rest_codec.load_json(prune_deep_members(body) if prune_deep else body, what)
        if not isinstance(doc, dict):
            raise InvalidArgument(f"the {what} must be a JSON object")
        return doc

    # -- health and metadata ---------------------------------------------------------------------------------
    async def server_metadata(self, request):
        m = self.dp.server_metadata()
        return _json({"name": m.name, "version": m.version, "extensions": list(m.extensions)})

    # Health: the status is the answer for Triton's clients (400 while not ready, as Triton); the body is the
    # KServe v2 spec's, which KServe's InferenceRESTClient reads (an empty body made it fail to parse).
    async def live(self, request):
        return _json({"live": True})

    async def ready(self, request):
        ready = self.dp.is_ready()
        return _json({"ready": ready}, 200 if ready else 400)

    async def model_ready(self, request, name, version=""):
        ready = self.dp.model_ready(pb.ModelReadyRequest(name=name, version=version)).ready
        return _json({"name": name, "ready": ready}, 200 if ready else 400)

    async def model_metadata(self, request, name, version=""):
        m = self.dp.model_metadata(pb.ModelMetadataRequest(name=name, version=version))
        tensors = [[{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]
                   for ts in (m.inputs, m.outputs)]
        return _json({"name": m.name, "versions": list(m.versions), "platform": m.platform,
                      "inputs": tensors[0], "outputs": tensors[1]})

    async def model_config(self, request, name, version=""):
        return _json(message_json(self.dp.model_config(pb.ModelConfigRequest(name=name, version=version)).config))

    async def stats(self, request, name="", version=""):
        req = pb.ModelStatisticsRequest(name=name, version=version)
        return _json(message_json(await self.dp.statistics_everywhere(req)))

    # -- repository ------------------------------------------------------------------------------------------
    async def repository_index(self, request):
        doc = await self._json_body(request, "repository index request", prune_deep=True)  # as Triton: any depth
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):  # Triton's wording
            raise InvalidArgument("Invalid value for 'ready': expected a boolean")
        rows = []
        for m in self.dp.repository_index(pb.RepositoryIndexRequest(ready=ready)).models:
            row = {"name": m.name}
            row.update((k, v) for k, v in (("version", m.version), ("state", m.state), ("reason", m.reason)) if v)
            rows.append(row)
        return _json(rows)

    async def labels(self, request, name):
        """Delayed labels: ``{"labels": [{"id": REQUEST_ID, "value": V} | {"id": ..., "values": [V, ...]} |
        {"id": ..., "row": R, "value": V}]}`` (one value per row of the request, or one for the row named) ->
        ``{"joined": n, "pending": n, "unknown": n, "duplicate": n, "corrected": n}``."""
        if self.lineage is None:
            raise FailedPrecondition("labels are joined with the prediction log, which is off: start the server "
                                     "with --prediction-log DIR")
        doc = await self._json_body(request, "labels request")
        labels = doc.get("labels")
        if not isinstance(labels, list):
            raise InvalidArgument('the labels request must be {"labels": [{"id": "...", "value": 1.0}, ...]}')
        items = []
        for i, lb in enumerate(labels):
            rid = lb.get("id") if isinstance(lb, dict) else None
            values = lb.get("values", [lb["value"]] if "value" in lb else None) if isinstance(lb, dict) else None
            if not isinstance(rid, str) or not isinstance(values, list) or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                raise InvalidArgument(f"labels[{i}] must be an object with a string 'id' and a number 'value' "
                                      "(or a list of numbers 'values', one per row)")
            row = lb.get("row", ALL_ROWS)
            if not isinstance(row, int) or isinstance(row, bool) or ("row" in lb and row < 0):
                raise InvalidArgument(f"labels[{i}]: 'row' must be the row's index in its request (0, 1, ...)")
            items.append((rid, [float(v) for v in values], row))
        c = await self.lineage.submit(name, items)
        return _json({"joined": c.joined, "pending": c.pending, "unknown": c.unknown, "duplicate": c.duplicate,
                      "corrected": c.corrected})

    async def events(self, request, name, version=""):
        """Events for a model's windowed aggregates, never scored: an infer-shaped body (JSON or binary tensors)
        of any subset of its raw inputs -> ``{"recorded": n, "late": n, "skipped": n}`` (gRPC: Events/Ingest)."""
        body = await self._body(request)
        req = rest_codec.parse_infer_request(body, rest_codec.header_length(request.headers.get(HEADER_LENGTH),
                                                                            len(body)))
        c = await self.dp.ingest_events(name, version, req.inputs, req.raw)
        return _json({"recorded": c.recorded, "late": c.late, "skipped": c.skipped})

    async def load(self, request, name):
        doc = await self._json_body(request, "load request")
        req = pb.RepositoryModelLoadRequest(model_name=name)
        for key, value in _parameters(doc, "load request").items():
            param = req.parameters[key]
            if key.startswith(FILE_PREFIX) and isinstance(value, str):  # a file override: base64 over REST
                try:
                    param.bytes_param = base64.b64decode(value, validate=True)
                except ValueError:
                    raise InvalidArgument(f"load parameter '{key}' is not valid base64") from None
            elif isinstance(value, bool):
                param.bool_param = value
            elif isinstance(value, int):
                param.int64_param = value
            elif isinstance(value, str):
                param.string_param = value
            else:
                raise InvalidArgument(f"load parameter '{key}' must be a string, integer or boolean")
        await self.dp.repository_load(req)
        return _empty(200)

    async def unload(self, request, name):
        _parameters(await self._json_body(request, "unload request"), "unload request")
        await self.dp.repository_unload(pb.RepositoryModelUnloadRequest(model_name=name))
        return _empty(200)

    # -- Triton's trace and logging extensions -------------------------------------------------------------------
    async def trace_setting(self, request, name=""):
        control = runtime_settings.trace_control(self.trace_control)
        runtime_settings.check_model(self.dp, name)
        changes = (runtime_settings.rest_trace_changes(await self._json_body(request, "trace setting request"))
                   if request.method == "POST" else {})
        if not changes:
            return _json(runtime_settings.rest_trace_reply(control.get(name)))
        values = control.update(name, changes)
        await self.dp.apply_everywhere(runtime_settings.TRACE_KEY, runtime_settings.trace_request(name, changes))
        return _json(runtime_settings.rest_trace_reply(values))

    async def logging_settings(self, request):
        control = runtime_settings.log_control(self.log_control)
        changes = await self._json_body(request, "log settings request") if request.method == "POST" else {}
        if not changes:
            return _json(control.get())
        for key, value in changes.items():  # what a gRPC LogSettings request can carry
            if value is not None and type(value) not in (bool, int, str):
                raise InvalidArgument(f"log setting '{key}' must be a boolean, an integer or a string")
        values = control.update(changes)
        await self.dp.apply_everywhere(runtime_settings.LOG_KEY, runtime_settings.log_request(changes))
        return _json(values)

    # -- inference -------------------------------------------------------------------------------------------
    async def infer(self, request, name, version=""):
        received_ns = time.perf_counter_ns()
        tracer = self.tracer
        trace = tracer.start_http(request.headers) if tracer is not None else None
        body = await self._body(request)
        json_size = request.headers.get(HEADER_LENGTH)
        if json_size is not None and json_size.strip() == "0":  # a raw binary request: the body is the input
            req = raw_binary_request(body, self.dp.repository.get(name, version))
        else:
            req = rest_codec.parse_infer_request(body, rest_codec.header_length(json_size, len(body)))
        header = self.dp.key_header  # the caller, for shadow sampling and canary arms (when configured)
        targets = output_targets(self.dp.shm.table, req.output_parameters)  # outputs into shared memory
        req.id = assign_id(req.id)
        if req.nulls:  # JSON null means missing, which only a feature spec's raw inputs can take
            refuse_nulls(req.nulls, name, self.dp.repository.get(name, version).features is not None)
        mv, names, arrays = await self.dp.infer_tensors(
            name, version, req.inputs, req.raw, req.output_names, req.output_parameters, req.parameters, req.id,
            received_ns, trace, request.headers.get(header) if header is not None else None)
        t = time.perf_counter_ns() if trace is not None else 0
        params = {SPEC_HASH_PARAM: mv.features.spec.sha256} if mv.features is not None else None
        if type(arrays) is FlaggedArrays:
            params = {**(params or {}), "fallback": arrays.reason}
        json_size, reply = rest_codec.infer_reply(
            req, mv.name, mv.version_text, write_outputs(targets, output_tensors(mv, names, arrays)), params)
        if trace is not None:
            trace.finish(mv, req.id, received_ns, t, time.perf_counter_ns())
        if json_size is None:
            resp = web.Response(body=reply, content_type=JSON)
        else:
            resp = web.Response(body=reply, content_type=BINARY, headers={HEADER_LENGTH: str(json_size)})
        return self._compressed(request, resp)

    # -- shared memory (Triton's extensions: server/shm/) -----------------------------------------------------
    def _shm_routes(self) -> list[tuple[str, str, Handler]]:
        routes = []
        for kind in ("system", "cuda"):
            base = f"{kind}sharedmemory"
            for action, method in (("status", "GET"), ("register", "POST"), ("unregister", "POST")):
                handler = functools.partial(self.shm, kind, action)
                routes += [(method, f"{base}/{action}", handler), (method, f"{base}/region/{{}}/{action}", handler)]
        return routes

    async def shm(self, kind: str, action: str, request, name: str = ""):
        """/v2/{system,cuda}sharedmemory[/region/{name}]/{status,register,unregister}, as Triton's."""
        if action == "status":
            req = (pb.SystemSharedMemoryStatusRequest if kind == "system" else pb.CudaSharedMemoryStatusRequest)(
                name=name)
            resp = self.dp.shm.system_status(req) if kind == "system" else self.dp.shm.cuda_status(req)
            return _json([message_json(r) for r in resp.regions.values()])
        if action == "unregister":
            req = (pb.SystemSharedMemoryUnregisterRequest if kind == "system"
                   else pb.CudaSharedMemoryUnregisterRequest)(name=name)
            await self.dp.shm_register(f"{kind}_unregister", req)
            return _empty(200)
        if not name:
            raise InvalidArgument(f"'region name' is necessary to register {kind} shared memory region")
        doc = await self._json_body(request, "shared memory register request")
        if kind == "system":
            if "key" not in doc:
                raise InvalidArgument("Shared memory register request has no 'key' field")
            req = pb.SystemSharedMemoryRegisterRequest(name=name, key=_field(doc, "key", str),
                                                       offset=_field(doc, "offset", int, 0),
                                                       byte_size=_field(doc, "byte_size", int))
        else:
            handle = doc.get("raw_handle")
            if not isinstance(handle, dict) or not isinstance(handle.get("b64"), str):
                raise InvalidArgument("Shared memory register request has no 'raw_handle' field")
            try:
                raw = base64.b64decode(handle["b64"], validate=True)
            except ValueError:
                raise InvalidArgument("'raw_handle' of the register request is not valid base64") from None
            req = pb.CudaSharedMemoryRegisterRequest(name=name, raw_handle=raw,
                                                     device_id=_field(doc, "device_id", int),
                                                     byte_size=_field(doc, "byte_size", int))
        await self.dp.shm_register(f"{kind}_register", req)
        return _empty(200)

    def _compressed(self, request: web.BaseRequest, resp: web.Response) -> web.Response:
        """Compress when Accept-Encoding asks for gzip or deflate (aiohttp's compressor, which hands large
        bodies to an executor); the Inference-Header-Content-Length stays the uncompressed JSON size."""
        accept = request.headers.get("Accept-Encoding", "")
        if "gzip" in accept or "deflate" in accept:
            resp.enable_compression()
        return resp


_MISSING = object()


def _field(doc: dict, key: str, kind: type, default: Any = _MISSING) -> Any:
    """A field of a shared-memory register request: Triton's wording when absent or of the wrong type."""
    if key not in doc:
        if default is _MISSING:
            raise InvalidArgument(f"Shared memory register request has no '{key}' field")
        return default
    value = doc[key]
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
        raise InvalidArgument(f"Unable to parse '{key}': expected {'an unsigned integer' if kind is int else 'a string'}")
    return value


def _parameters(doc: dict, what: str) -> dict:
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidArgument(f"'parameters' of the {what} must be a JSON object")
    return params


def _too_large(size: str, limit: int, flag: str, raw: bool = False) -> str:
    """Triton's words (and status, 400) for a body over the limit, naming the flag that set it."""
    if raw:
        return (f"Raw input has a byte_size ({size} bytes) that exceeds the maximum allowed value of {limit} "
                f"bytes. Use {flag} to increase the limit.")
    return (f"request JSON size of {size} bytes exceeds the maximum allowed input size of {limit} bytes. "
            f"Use {flag} to increase the limit.")


def _decompress(body: bytes, wbits: int, encoding: str, limit: int, flag: str = "--http-max-input-size") -> bytes:
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        if encoding != "deflate":
            raise InvalidArgument(f"request body is not valid {encoding} data: {exc}") from None
        try:  # "deflate" as raw deflate (RFC 1951) rather than the zlib format (RFC 1950) most clients send
            d = zlib.decompressobj(-zlib.MAX_WBITS)
            out = d.decompress(body, limit + 1)
        except zlib.error:
            raise InvalidArgument(f"request body is not valid deflate data: {exc}") from None
    if len(out) > limit:  # Triton's words and status
        raise HttpError(400, f"Decompressed data size exceeds the maximum allowed value of {limit} bytes. Use "
                             f"{flag} to increase the limit.")
    if not d.eof:
        raise InvalidArgument(f"request body is truncated {encoding} data")
    return out


__all__ = ["HTTP_STATUS", "RestFrontend", "message_json", "status_of"]

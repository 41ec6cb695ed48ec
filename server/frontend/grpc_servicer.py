"""gRPC edge: adapts ``inference.GRPCInferenceService`` calls to the data plane and maps errors to codes.

This is the one exception boundary per RPC: domain errors become their status code and message, anything
unexpected becomes INTERNAL plus a log line, and no error escapes to crash the server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import grpc

from skewless.native.v2_codec import parse_infer_request
from skewless.protos import grpc_service_pb2 as pb
from skewless.protos import grpc_service_pb2_grpc as pb_grpc

from ..dataplane import DataPlane
from ..errors import SkewlessError
from ..peers import Peers, everywhere
from . import runtime_settings

if TYPE_CHECKING:
    from ..hooks import LogControl, TraceControl, Tracer

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"

STATUS = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "CANCELLED": grpc.StatusCode.CANCELLED,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "UNIMPLEMENTED": grpc.StatusCode.UNIMPLEMENTED,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, SkewlessError):
        return STATUS.get(exc.kind, grpc.StatusCode.INTERNAL), str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def metadata_value(metadata, name: str) -> str | None:
    """The value of gRPC metadata ``name`` (lowercase), or None."""
    for key, value in metadata or ():
        if key == name:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def rpc(method):
    """Exception boundary for a unary RPC."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await _abort(context, exc, method.__name__)

    return wrapper


def _status_logged(exc: BaseException, what: str) -> tuple[grpc.StatusCode, str]:
    """status_of(), logging the unexpected (INTERNAL) errors with their traceback."""
    code, message = status_of(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("%s failed", what, exc_info=exc)
    return code, message


async def _abort(context, exc: Exception, what: str) -> None:
    await context.abort(*_status_logged(exc, what))


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, tracer: Tracer | None = None):
        self.dp = dataplane
        # Reading a call's metadata costs microseconds: only done when tracing is configured.
        self.tracer = tracer
        # Triton's trace and log settings: set by the wiring (side modules behind hooks' interfaces)
        self.trace_control: TraceControl | None = None
        self.log_control: LogControl | None = None
        self.peers: Peers | None = None  # --workers N: settings changes apply on every worker

    @rpc
    async def ServerLive(self, request, context):
        return self.dp.server_live()

    @rpc
    async def ServerReady(self, request, context):
        return self.dp.server_ready()

    @rpc
    async def ModelReady(self, request, context):
        return self.dp.model_ready(request)

    @rpc
    async def ServerMetadata(self, request, context):
        return self.dp.server_metadata()

    @rpc
    async def ModelMetadata(self, request, context):
        return self.dp.model_metadata(request)

    @rpc
    async def ModelConfig(self, request, context):
        return self.dp.model_config(request)

    @rpc
    async def ModelStatistics(self, request, context):
        return await self.dp.statistics_everywhere(request)

    @rpc
    async def RepositoryIndex(self, request, context):
        return self.dp.repository_index(request)

    @rpc
    async def RepositoryModelLoad(self, request, context):
        return await self.dp.repository_load(request)

    @rpc
    async def RepositoryModelUnload(self, request, context):
        return await self.dp.repository_unload(request)

    async def ModelInfer(self, request: bytes, context):
        """Registered without (de)serializers: the data plane parses and builds the bytes natively. Its own
        exception boundary (not ``rpc``'s wrapper: one coroutine less per request)."""
        try:
            received_ns = time.perf_counter_ns()
            tracer = self.tracer
            trace = tracer.start_grpc(context.invocation_metadata()) if tracer is not None else None
            header = self.dp.key_header
            key = metadata_value(context.invocation_metadata(), header) if header is not None else None
            return await self.dp.infer_bytes(request, received_ns, context.time_remaining(), trace=trace,
                                             traffic_key=key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await _abort(context, exc, "ModelInfer")

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests of one stream run concurrently (and batch together); each response, or error, is sent as
        soon as it is ready. Each message is queued straight from the reader: no task per message.

        As in Triton, a failed request does not end the stream: its error travels in ``error_message``.
        With tracing, the stream's traceparent is the parent of every message's trace, each sampled on its own.
        """
        ready: deque = deque()  # replies to send, in completion order; None ends the stream
        wake: list[asyncio.Future | None] = [None]  # the writer's wait, when it has nothing to send
        outstanding = [0]  # submitted, outcome not delivered yet
        reading = [True]
        dp = self.dp
        loop = asyncio.get_running_loop()
        gone = loop.create_future()  # cancelled when the stream ends: its queued requests are then dropped
        tracer = self.tracer
        parent = tracer.parent_grpc(context.invocation_metadata()) if tracer is not None else None
        header = dp.key_header  # the stream's caller, for shadow sampling and canary arms
        key = metadata_value(context.invocation_metadata(), header) if header is not None else None

        def send(item) -> None:
            ready.append(item)
            waiter = wake[0]
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        def delivered(data: bytes, reply: bytes | None, exc: BaseException | None) -> None:
            outstanding[0] -= 1
            send(reply if exc is None else _stream_failure(data, exc))
            if not reading[0] and not outstanding[0]:
                send(None)  # the client is done sending and every reply has gone out

        async def read() -> None:
            try:
                async for data in request_iterator:
                    outstanding[0] += 1
                    try:
                        received_ns = time.perf_counter_ns()
                        trace = tracer.sample(parent, "grpc-stream") if tracer is not None else None
                        # The stream's deadline is each message's: one still queued when it passes is a
                        # deadline drop, as a unary call's is.
                        dp.infer_bytes(data, received_ns, context.time_remaining(), True,
                                       functools.partial(delivered, data), gone, trace, key)
                    except Exception as exc:
                        outstanding[0] -= 1
                        send(_stream_failure(data, exc))
            finally:
                reading[0] = False
                if not outstanding[0]:
                    send(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                while ready:
                    item = ready.popleft()
                    if item is None:
                        return
                    yield item
                wake[0] = loop.create_future()
                await wake[0]
                wake[0] = None
        finally:
            reader.cancel()
            gone.cancel()

    # -- shared memory (server/shm/) -------------------------------------------------------------------
    @rpc
    async def SystemSharedMemoryStatus(self, request, context):
        return self.dp.shm.system_status(request)

    @rpc
    async def SystemSharedMemoryRegister(self, request, context):
        return await self.dp.shm_register("system_register", request)

    @rpc
    async def SystemSharedMemoryUnregister(self, request, context):
        return await self.dp.shm_register("system_unregister", request)

    @rpc
    async def CudaSharedMemoryStatus(self, request, context):
        return self.dp.shm.cuda_status(request)

    @rpc
    async def CudaSharedMemoryRegister(self, request, context):
        return await self.dp.shm_register("cuda_register", request)

    @rpc
    async def CudaSharedMemoryUnregister(self, request, context):
        return await self.dp.shm_register("cuda_unregister", request)
    # -- end of shared memory ---------------------------------------------------------------------------


    # -- Triton's trace and logging extensions (frontend/runtime_settings.py) --------------------------------
    @everywhere(SERVICE)
    @rpc
    async def TraceSetting(self, request, context):
        return runtime_settings.trace_setting(self.trace_control, self.dp, request)

    @everywhere(SERVICE)
    @rpc
    async def LogSettings(self, request, context):
        return runtime_settings.log_settings(self.log_control, request)


def _stream_failure(data: bytes, exc: BaseException) -> bytes:
    _, message = _status_logged(exc, "stream request")
    return _stream_error(data, message)


def _stream_error(data: bytes, message: str) -> bytes:
    """A stream error names the request it answers, when its id can be read at all."""
    resp = pb.ModelStreamInferResponse(error_message=message)
    try:
        req = parse_infer_request(data)
        resp.infer_response.model_name = req.model_name
        resp.infer_response.model_version = req.model_version
        resp.infer_response.id = req.id
    except Exception:  # malformed bytes: the error message already says so
        pass
    return resp.SerializeToString()


class _HandlerCapture:
    """Collects the handlers the generated code would register, so two of them can be swapped."""

    def __init__(self) -> None:
        self.handlers: dict = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.handlers = dict(handlers)


def add_inference_service(servicer: InferenceServicer, server) -> None:
    """Register every RPC as generated, except ModelInfer and ModelStreamInfer, which take and return bytes."""
    capture = _HandlerCapture()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, capture)
    handlers = capture.handlers
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(servicer.ModelInfer)
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(servicer.ModelStreamInfer)
    # Generic handlers only: registering the same handlers as "registered methods" as well (what the
    # generated code does) cost ~50 us more server CPU per request under grpc.aio (measured against the
    # echo server, benchmarks/echo_server.py, at 64 clients).
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

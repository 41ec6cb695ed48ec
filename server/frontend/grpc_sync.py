"""The ``--grpc-transport sync`` gRPC server: grpcio's thread-pool server in front of the event loop's data plane.

Why: grpcio's sync server (C-core's completion queue, each call's handler on a pool thread) costs less CPU per
call than grpc.aio: echoing a fixed reply it took 0.74x the CPU and served 1.29x the calls/s of grpc.aio +
uvloop at 64 clients (benchmarks/echo_server.py; issue 28). The data plane, batcher and models stay where they
are, on the event loop; only the transport moves. ``benchmarks/transport_report.py`` measures the two.

The hand-off: a handler thread puts its call in ``LoopInbox``; the loop is woken once per burst (not per call:
arrivals while a drain is pending ride along) and submits the call to the data plane with the call as the
stream-style ``deliver`` callback. With direct replies (``DIRECT_REPLIES``) the handler has returned by then
and the completion sends the encoded reply and the status itself; otherwise the handler blocks on a lock of its
own, which the completion releases. The call object is also the request's ``watch``: its ``cancelled()`` turns
true when gRPC ends the call (client cancel, deadline), and the batcher then drops it while it is queued, as it
does for a cancelled aio handler.

Everything else is bridged unchanged: ``SyncServer`` takes the aio servicers' handlers (it has the part of
grpc.aio.Server's interface the app uses) and runs each coroutine on the loop from the handler thread
(``asyncio.run_coroutine_threadsafe``: the handler thread's context, e.g. the caller the guard set for the audit
log, goes with it), mapping the servicer's ``context.abort`` to the sync context's. Synchronous handlers (the
reflection service) are registered as they are.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import inspect
import logging
import queue
import threading
import time
from typing import Any

import grpc
from grpc import _server as _grpc_server

from .grpc_servicer import InferenceServicer, _status_logged, _stream_failure, metadata_value

log = logging.getLogger(__name__)

# Direct replies: ModelInfer is registered as a non-blocking response-streaming handler (on the wire a unary
# call is the same exchange: one message each way, then the status), and the loop sends the reply bytes and
# the OK status in one non-blocking batch with grpcio's own ``_server._status``, what its unary path does once a
# handler returns. The handler thread is then free as soon as it has queued the request: no thread waits per
# call, and no wake-up of a handler thread per reply. Private to grpcio (checked in tests/test_grpc_transport.py
# for the installed version); where it is missing the handler thread blocks for its reply instead.
_SEND_STATUS = getattr(_grpc_server, "_status", None)
DIRECT_REPLIES = _SEND_STATUS is not None

# A call without a deadline: the sync context's time_remaining() is then about the epoch's infinity.
_NO_DEADLINE_S = 1e9


def time_remaining(context: grpc.ServicerContext) -> float | None:
    """The call's time left (s) as grpc.aio gives it: None when it has no deadline."""
    left = context.time_remaining()
    return None if left is None or left > _NO_DEADLINE_S else left


class LoopInbox:
    """Calls from other threads run on the event loop in arrival order, with one loop wake-up per burst: a
    call that finds a drain already scheduled only joins the queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def call(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the loop soon (from any thread)."""
        self._queue.append((fn, args))
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            self._scheduled = False  # from here on an arrival schedules the next drain
        q = self._queue
        while q:
            fn, args = q.popleft()
            try:
                fn(*args)
            except Exception:  # one call's failure must not strand the others queued behind it
                log.exception("a gRPC call's hand-off to the event loop failed")


class _DirectCall:
    """One unary ModelInfer answered from the loop (see DIRECT_REPLIES): the data plane's completion sends the
    reply, or the error's status, straight on the call; also the ``watch`` the batcher polls (cancelled once
    gRPC has ended the call)."""

    __slots__ = ("context", "gone")

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.context = context
        self.gone = False

    def cancelled(self) -> bool:
        return self.gone

    def deliver(self, reply: bytes | None, error: BaseException | None) -> None:
        context = self.context
        if error is not None:
            code, details = _status_logged(error, "ModelInfer")
            context.set_code(code)
            context.set_details(details)
            reply = None
        _SEND_STATUS(context._rpc_event, context._state, reply)  # a no-op once the call has ended

    def end(self) -> None:
        self.gone = True


class _Call:
    """One unary ModelInfer between its handler thread and the loop: the reply (or error), the lock the
    handler waits on, and the ``watch`` the batcher polls (cancelled once gRPC has ended the call)."""

    __slots__ = ("reply", "error", "gone", "_waiter")

    def __init__(self) -> None:
        self.reply: bytes | None = None
        self.error: BaseException | None = None
        self.gone = False
        self._waiter = threading.Lock()
        self._waiter.acquire()

    def cancelled(self) -> bool:
        return self.gone

    def deliver(self, reply: bytes | None, error: BaseException | None) -> None:
        """The data plane's completion (on the loop): the reply bytes or the error, then wake the handler."""
        self.reply, self.error = reply, error
        self._wake()

    def end(self) -> None:
        """gRPC ended the call (its callback; after a normal reply too): a queued request is dropped."""
        self.gone = True
        self._wake()

    def _wake(self) -> None:
        try:  # noqa: SIM105 - per request: a bare try costs less than contextlib.suppress
            self._waiter.release()
        except RuntimeError:  # woken already (the reply and the call's end race; either wakes it once)
            pass

    def wait(self) -> None:
        self._waiter.acquire()


class _Stream:
    """One ModelStreamInfer: a reader thread hands each message to the loop, the loop completes each into
    ``replies`` (in completion order, as the aio stream does), the handler thread writes them out. The stream
    state is touched on the loop only; the object is also its requests' ``watch``."""

    __slots__ = ("dp", "context", "tracer", "parent", "key", "replies", "outstanding", "reading", "gone",
                 "inbox")

    def __init__(self, servicer: InferenceServicer, inbox: LoopInbox, context: grpc.ServicerContext):
        self.dp = servicer.dp
        self.inbox = inbox
        self.context = context
        self.tracer = servicer.tracer
        metadata = context.invocation_metadata() if self.tracer is not None or self.dp.key_header else ()
        self.parent = self.tracer.parent_grpc(metadata) if self.tracer is not None else None
        header = self.dp.key_header
        self.key = metadata_value(metadata, header) if header is not None else None
        self.replies: queue.SimpleQueue = queue.SimpleQueue()  # None ends the stream
        self.outstanding = 0  # submitted, outcome not delivered yet
        self.reading = True
        self.gone = False

    def cancelled(self) -> bool:
        return self.gone

    def read(self, requests) -> None:
        """The reader thread: every message to the loop, then the end of reading."""
        call = self.inbox.call
        context = self.context
        try:
            for data in requests:
                call(self._submit, data, time.perf_counter_ns(), time_remaining(context))
        except Exception:  # the call was cancelled or failed: gRPC has ended it, nothing to answer
            pass
        finally:
            call(self._read_all)

    def _submit(self, data: bytes, received_ns: int, remaining: float | None) -> None:
        if self.gone:
            return
        self.outstanding += 1
        try:
            trace = self.tracer.sample(self.parent, "grpc-stream") if self.tracer is not None else None
            # The stream's deadline is each message's, as on the aio transport.
            self.dp.infer_bytes(data, received_ns, remaining, True, functools.partial(self._delivered, data),
                                self, trace, self.key)
        except Exception as exc:
            self.outstanding -= 1
            self.replies.put(_stream_failure(data, exc))

    def _delivered(self, data: bytes, reply: bytes | None, exc: BaseException | None) -> None:
        self.outstanding -= 1
        self.replies.put(reply if exc is None else _stream_failure(data, exc))
        if not self.reading and not self.outstanding:
            self.replies.put(None)  # the client is done sending and every reply has gone out

    def _read_all(self) -> None:
        self.reading = False
        if not self.outstanding:
            self.replies.put(None)

    def end(self) -> None:
        """gRPC ended the call: queued requests are dropped, the writer stops."""
        self.gone = True
        self.replies.put(None)


class SyncInference:
    """ModelInfer and ModelStreamInfer for the thread-pool server, on an InferenceServicer's data plane."""

    def __init__(self, servicer: InferenceServicer, inbox: LoopInbox):
        self.servicer = servicer
        self.dp = servicer.dp
        self.inbox = inbox

    def model_infer(self, request: bytes, context: grpc.ServicerContext) -> bytes | None:
        received_ns = time.perf_counter_ns()
        call = _Call()
        if not context.add_callback(call.end):  # ended before it started
            return None
        dp = self.dp
        metadata = context.invocation_metadata() if self.servicer.tracer is not None or dp.key_header else None
        self.inbox.call(self._start, call, request, received_ns, time_remaining(context), metadata)
        call.wait()
        if call.error is not None:
            context.abort(*_status_logged(call.error, "ModelInfer"))
        return call.reply  # None: the call has ended already (cancelled, deadline), nobody to answer

    def model_infer_direct(self, request: bytes, context: grpc.ServicerContext, _send_response=None) -> None:
        """The non-blocking handler (DIRECT_REPLIES): queue the request for the loop and return."""
        received_ns = time.perf_counter_ns()
        call = _DirectCall(context)
        if not context.add_callback(call.end):  # ended before it started
            return
        dp = self.dp
        metadata = context.invocation_metadata() if self.servicer.tracer is not None or dp.key_header else None
        self.inbox.call(self._start, call, request, received_ns, time_remaining(context), metadata)

    def _start(self, call: _Call | _DirectCall, request: bytes, received_ns: int, remaining: float | None,
               metadata) -> None:
        """On the loop: submit, the call being both the completion and the watch."""
        if call.gone:
            return
        try:
            dp, tracer = self.dp, self.servicer.tracer
            trace = tracer.start_grpc(metadata) if tracer is not None else None
            header = dp.key_header
            key = metadata_value(metadata, header) if header is not None else None
            dp.infer_bytes(request, received_ns, remaining, False, call.deliver, call, trace, key)
        except Exception as exc:
            call.deliver(None, exc)

    def model_stream_infer(self, requests, context: grpc.ServicerContext):
        stream = _Stream(self.servicer, self.inbox, context)
        if not context.add_callback(stream.end):
            return
        threading.Thread(target=stream.read, args=(requests,), name="grpc-stream-reader", daemon=True).start()
        get = stream.replies.get
        try:
            while (item := get()) is not None:
                yield item
        finally:
            stream.end()


class _Abort(BaseException):
    """A bridged coroutine's ``context.abort``: carried to the handler thread, which aborts the real call. A
    BaseException, so that the servicers' exception boundaries (``except Exception``) let it through, as they
    do grpc.aio's own."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(code, details)
        self.code, self.details = code, details


class _LoopContext:
    """The sync call's context as an aio servicer uses it, on the loop: ``abort`` and ``write`` are coroutines,
    the rest is the call's own."""

    def __init__(self, context: grpc.ServicerContext, writes: queue.SimpleQueue | None = None):
        self._context = context
        self._writes = writes

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        if trailing_metadata:
            self._context.set_trailing_metadata(trailing_metadata)
        raise _Abort(code, details)

    async def write(self, message) -> None:
        if self._writes is None:
            raise RuntimeError("write() on a unary-response call")
        self._writes.put((True, message))

    def time_remaining(self) -> float | None:
        return time_remaining(self._context)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


_END = (False, None)


def _unary(loop: asyncio.AbstractEventLoop, behavior):
    """An aio unary-response behaviour (a coroutine function) run on the loop from the handler thread."""

    def handler(request, context):
        future = asyncio.run_coroutine_threadsafe(behavior(request, _LoopContext(context)), loop)
        context.add_callback(future.cancel)  # the client went away: the coroutine is cancelled, as on aio
        try:
            return future.result()
        except _Abort as abort:
            context.abort(abort.code, abort.details)
        except concurrent.futures.CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "cancelled")

    return handler


def _server_streaming(loop: asyncio.AbstractEventLoop, behavior):
    """An aio response-streaming behaviour (an async generator, or a coroutine that writes to its context,
    as grpc_health's Watch does) run on the loop, its replies written out by the handler thread."""

    def handler(request, context):
        writes: queue.SimpleQueue = queue.SimpleQueue()
        ctx = _LoopContext(context, writes)

        async def pump() -> None:
            try:
                if inspect.isasyncgenfunction(behavior):
                    async for reply in behavior(request, ctx):
                        writes.put((True, reply))
                else:
                    reply = await behavior(request, ctx)
                    if reply is not None:
                        writes.put((True, reply))
                writes.put(_END)
            except BaseException as exc:
                writes.put((False, exc))
                raise

        future = asyncio.run_coroutine_threadsafe(pump(), loop)
        context.add_callback(future.cancel)
        context.add_callback(functools.partial(writes.put, _END))
        try:
            while True:
                ok, item = writes.get()
                if ok:
                    yield item
                elif item is None or isinstance(item, asyncio.CancelledError):
                    return
                elif isinstance(item, _Abort):
                    context.abort(item.code, item.details)
                else:
                    raise item
        finally:
            future.cancel()

    return handler


class SyncServer:
    """grpcio's thread-pool server with the part of grpc.aio.Server's interface the app uses; aio handlers
    registered on it run on ``loop`` (see the module's docstring). Create it inside the running loop."""

    def __init__(self, threads: int, interceptors=None, options=None):
        self.loop = asyncio.get_running_loop()
        self.inbox = LoopInbox(self.loop)
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="grpc-handler")
        self._server = grpc.server(self._pool, interceptors=interceptors, options=options)

    # -- registration: aio handlers in, sync handlers registered ---------------------------------------
    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        self._server.add_generic_rpc_handlers(tuple(_BridgedGeneric(self, g) for g in generic_handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self._server.add_registered_method_handlers(
            service, {name: self.bridge(h) for name, h in handlers.items()})

    def bridge(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The sync handler serving what ``handler`` (an aio or sync one) serves."""
        kw = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            behavior = handler.unary_unary
            if getattr(behavior, "__func__", None) is InferenceServicer.ModelInfer:
                inference = SyncInference(behavior.__self__, self.inbox)
                if not DIRECT_REPLIES:
                    return grpc.unary_unary_rpc_method_handler(inference.model_infer, **kw)
                direct = functools.partial(inference.model_infer_direct)  # a partial can carry the flag
                direct.experimental_non_blocking = True
                return grpc.unary_stream_rpc_method_handler(direct, **kw)
            if inspect.iscoroutinefunction(behavior):
                return grpc.unary_unary_rpc_method_handler(_unary(self.loop, behavior), **kw)
            return handler
        if handler.unary_stream is not None:
            behavior = handler.unary_stream
            if inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior):
                return grpc.unary_stream_rpc_method_handler(_server_streaming(self.loop, behavior), **kw)
            return handler
        behavior = handler.stream_stream or handler.stream_unary
        if getattr(behavior, "__func__", None) is InferenceServicer.ModelStreamInfer:
            return grpc.stream_stream_rpc_method_handler(
                SyncInference(behavior.__self__, self.inbox).model_stream_infer, **kw)
        if inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior):
            raise TypeError(f"no bridge for the client-streaming aio handler {behavior!r}")
        return handler

    # -- ports and lifecycle -----------------------------------------------------------------------------
    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, credentials)

    async def start(self) -> None:
        self._server.start()

    async def stop(self, grace: float | None) -> None:
        """New calls are refused at once; those in flight get ``grace`` seconds (their handlers still reach the
        loop, which runs on while this waits)."""
        stopped = self._server.stop(grace)
        await self.loop.run_in_executor(None, stopped.wait)
        self._pool.shutdown(wait=False)


class _BridgedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose handlers are bridged once per method name (gRPC asks for every call)."""

    def __init__(self, server: SyncServer, inner: grpc.GenericRpcHandler):
        self._server = server
        self._inner = inner
        self._bridged: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        try:
            return self._bridged[method]
        except KeyError:
            pass
        handler = self._inner.service(handler_call_details)
        if handler is None:  # not this service's: not remembered (callers choose the names)
            return None
        bridged = self._bridged[method] = self._server.bridge(handler)
        return bridged


__all__ = ["LoopInbox", "SyncInference", "SyncServer", "time_remaining"]

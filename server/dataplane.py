"""Transport-free data plane: one method per RPC, protocol messages in and out, domain errors raised.

The gRPC servicer only adapts transports to these calls, so a second front end (HTTP/REST) or an in-process
client can reuse all of the validation and execution below.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np

from skewless.native.v2_codec import InputTensor, WireFormatError, build_infer_response, parse_infer_request
from skewless.protos import grpc_service_pb2 as pb

from .batching.batcher import settle
from .codec import DATATYPES, decode_raw, decode_typed, element_count, encode_array, format_shape
from .errors import InvalidArgument, Overloaded, SkewlessError
from .fallback import Fallback, FallbackArrays
from .features.missing import missing_raw
from .lineage.ids import assign_id
from .models.config import TensorSpec
from .models.repository import ModelRepository
from .models.stats import Duration, ModelStats
from .models.version import ModelVersion

if TYPE_CHECKING:  # the request path only carries a trace; it never imports OpenTelemetry
    from .telemetry.tracing import RequestTrace

SERVER_NAME = "skewless"
Deliver = Callable[[Any, "BaseException | None"], None]
log = logging.getLogger(__name__)
_STREAM_TAG = bytes([2 << 3 | 2])  # ModelStreamInferResponse.infer_response, length-delimited
SPEC_HASH_PARAM = "skewless.feature_spec_hash"  # reply parameter naming the feature spec that served it
# Only what is really implemented: tritonclient and perf_analyzer branch on these names.
EXTENSIONS = ["model_repository", "model_configuration", "statistics"]


@dataclass(frozen=True, slots=True)
class TensorHeader:
    """An input as a transport other than gRPC describes it (its data travels separately, as a raw buffer)."""

    name: str
    datatype: str
    shape: Sequence[int]


def server_version() -> str:
    try:
        return metadata.version("skewless")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


class DataPlane:
    def __init__(self, repository: ModelRepository, key_header: str | None = None):
        self.repository = repository
        self.accepting = True
        repository.version_hooks.append(self._bind_fallback)
        # The header (gRPC metadata / HTTP) naming the caller for shadow sampling and canary arms; None: the
        # transports read no header for it.
        self.key_header = key_header.lower() if key_header else None

    # -- health and metadata -------------------------------------------------------------------------
    def _bind_fallback(self, mv: ModelVersion) -> None:
        """A version whose fallback is another model resolves it through the repository, when needed."""
        if mv.fallback is not None and mv.fallback.model is not None:
            mv.fallback.resolve = self.repository.get

    def server_live(self) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def server_ready(self) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.is_ready())

    def is_ready(self) -> bool:
        """Triton's strict readiness: accepting requests, and every model meant to serve has a ready version."""
        if not self.accepting:
            return False
        return all(m.serving for m in self.repository.models.values() if m.wanted)

    def model_ready(self, req: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.repository.is_ready(req.name, req.version))

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS)

    def model_metadata(self, req: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        mv = self.repository.get(req.name, req.version)
        model = self.repository.models[req.name]
        resp = pb.ModelMetadataResponse(
            name=mv.name, versions=[str(v) for v in sorted(model.serving)], platform=mv.config.platform)
        batch = [-1] if mv.max_batch_size > 0 else []
        for specs, field in ((mv.inputs, resp.inputs), (mv.outputs, resp.outputs)):
            for spec in specs.values():
                field.add(name=spec.name, datatype=spec.datatype.name, shape=[*batch, *spec.dims])
        return resp

    def model_config(self, req: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        mv = self.repository.get(req.name, req.version)
        return pb.ModelConfigResponse(config=mv.config)

    # -- inference -----------------------------------------------------------------------------------
    async def infer(self, req: pb.ModelInferRequest, received_ns: int | None = None,
                    time_remaining_s: float | None = None, watch: asyncio.Future | None = None,
                    trace: RequestTrace | None = None, traffic_key: str | None = None) -> pb.ModelInferResponse:
        """The general path, for protobuf messages (typed contents, output parameters). Cancelling ``watch``
        (by default: cancelling this coroutine) drops the request while it is queued. ``traffic_key``: the
        caller's key from a header (--traffic-key-header), for shadow sampling and canary arms."""
        _check_output_parameters(req)
        received_ns = received_ns or time.perf_counter_ns()
        rid = assign_id(req.id)
        mv = self.repository.get(req.model_name, req.model_version)
        if mv.traffic is not None and not req.model_version:
            mv = mv.traffic.route(mv, req.parameters, req.id, traffic_key)
        names, arrays = await self.start(mv, received_ns, time_remaining_s, None, req.inputs,
                                         req.raw_input_contents, [o.name for o in req.outputs], req.parameters,
                                         rid, watch=watch, trace=trace, traffic_key=traffic_key)
        if trace is None:
            return encode_response(rid, mv, names, arrays)
        t = time.perf_counter_ns()
        resp = encode_response(rid, mv, names, arrays)
        trace.finish(mv, rid, received_ns, t, time.perf_counter_ns())
        return resp

    def infer_bytes(self, data: bytes, received_ns: int | None = None, time_remaining_s: float | None = None,
                    stream: bool = False, deliver: Deliver | None = None,
                    watch: asyncio.Future | None = None, trace: RequestTrace | None = None,
                    traffic_key: str | None = None) -> asyncio.Future:
        """The hot path: request bytes in, a future of the reply bytes out, no protobuf objects in between.

        Synchronous up to the model's queue, so a stream can submit each message without a task of its own.
        Requests rejected at once raise here; later failures come through the future, or with ``deliver``
        (a stream's callback, given (reply, None) or (None, error); nothing if cancelled) instead of it: the
        returned future then only serves to cancel. ``stream`` wraps the reply as
        ModelStreamInferResponse.infer_response (field 2). With ``deliver``, a queued request is dropped
        uncomputed once ``watch`` (a stream's own future) is cancelled. ``trace``: a sampled request's trace
        (telemetry/tracing.py; None, the common case, costs nothing), finished once the reply is encoded.
        """
        received_ns = received_ns or time.perf_counter_ns()
        try:
            req = parse_infer_request(data)
        except WireFormatError as exc:
            raise InvalidArgument(f"malformed ModelInferRequest: {exc}") from None
        if req.has_contents or req.output_parameters:
            task = asyncio.ensure_future(
                self._infer_message(data, received_ns, time_remaining_s, stream, watch, trace, traffic_key))
            if deliver is not None:
                task.add_done_callback(functools.partial(_deliver_outcome, deliver))
            return task
        mv = self.repository.get(req.model_name, req.model_version)
        if mv.traffic is not None and not req.model_version:  # a canary split or shadow (shadow/)
            mv = mv.traffic.route(mv, req.parameters, req.id, traffic_key)
        plan = mv.plan
        # The compiled plan takes well-formed requests in one call; anything else (or any error) is decoded
        # by the general path, which words the error.
        decoded = plan.decode(req) if plan is not None else None
        rid = req.id or assign_id("")
        return self.start(mv, received_ns, time_remaining_s, decoded, req.inputs, req.raw, req.outputs,
                          req.parameters, rid, (rid, _STREAM_TAG if stream else None), deliver, watch, trace,
                          traffic_key)

    async def infer_tensors(self, model_name: str, model_version: str, inputs: Sequence[TensorHeader],
                            raw: Sequence[bytes | memoryview], output_names: Sequence[str] = (),
                            output_parameters: Mapping[str, Mapping[str, Any]] | None = None,
                            params: Mapping[str, Any] | None = None, request_id: str = "",
                            received_ns: int | None = None, trace: RequestTrace | None = None,
                            traffic_key: str | None = None) -> tuple[ModelVersion, list[str], list[np.ndarray]]:
        """For transports that are not protobuf (HTTP/REST): inputs as headers plus one raw little-endian
        buffer each (BYTES length-prefixed, as on the gRPC wire), so every check and message is the gRPC
        path's. ``params`` are plain values (``priority``, ``timeout`` in µs); ``output_parameters`` the
        requested outputs' own. Returns the version that ran, the output names and their arrays; a ``trace``
        is finished by the caller, which encodes the reply (on failure, here)."""
        received_ns = received_ns or time.perf_counter_ns()
        if output_parameters:
            _check_classification((name, p) for name, p in output_parameters.items())
        mv = self.repository.get(model_name, model_version)
        if mv.traffic is not None and not model_version:
            mv = mv.traffic.route(mv, params, request_id, traffic_key)
        request_id = assign_id(request_id)
        names, arrays = await self.start(mv, received_ns, None, None, inputs, raw, list(output_names), params,
                                         request_id, trace=trace, traffic_key=traffic_key)
        return mv, names, arrays

    async def _infer_message(self, data: bytes, received_ns: int, time_remaining_s: float | None,
                             stream: bool, watch: asyncio.Future | None, trace: RequestTrace | None = None,
                             traffic_key: str | None = None) -> bytes:
        resp = await self.infer(pb.ModelInferRequest.FromString(data), received_ns, time_remaining_s, watch,
                                trace, traffic_key)
        if stream:
            return pb.ModelStreamInferResponse(infer_response=resp).SerializeToString()
        return resp.SerializeToString()

    def start(self, mv: ModelVersion, received_ns: int, time_remaining_s: float | None, decoded: tuple | None,
              tensors, raw, output_names: list[str], params, request_id: str,
              reply: tuple[str, bytes | None] | None = None,
              deliver: Deliver | None = None, watch: asyncio.Future | None = None,
              trace: RequestTrace | None = None, traffic_key: str | None = None) -> asyncio.Future:
        """Validate and decode (unless ``decoded`` by the plan), then queue or run: a future of the reply
        bytes with ``reply`` (the request id, and the stream tag or None), else of (output names, arrays); or,
        with ``deliver``, the outcome handed to it and the running request's own handle returned (to cancel
        it), and cancelling ``watch`` drops it while queued. Counts the request in flight and in the statistics
        until it completes."""
        mv.enter()
        try:
            total = mv.total
            if total.limit and total.n > total.limit:
                raise Overloaded(f"server busy: {total.limit} requests are already in flight (its --max-inflight "
                                 "limit); retry later")
            if decoded is not None:
                feeds, rows, names = decoded
            else:
                feeds, rows = decode_inputs(tensors, raw, mv)
                if mv.features is not None:  # raw feature columns: row counts checked, tagged for the feature log
                    feeds = mv.features.admit(feeds, request_id)
                names = requested_outputs(output_names, mv)
            priority, timeout_us = scheduling_parameters(params) if params else (0, None)
            deadline = None
            if time_remaining_s is not None:
                deadline = asyncio.get_running_loop().time() + time_remaining_s
            result = None
            if deliver is None:
                result = asyncio.get_running_loop().create_future()
                if watch is None:
                    watch = result
            complete = functools.partial(_complete, deliver or result, mv, names, received_ns, reply)
            if mv.fallback is not None:  # fallback/: failures answered by a constant or rule, flagged
                complete = functools.partial(_with_fallback, mv.fallback, feeds, rows, names, complete)
            if trace is not None:  # sampled: note the hand-off to the scheduler, finish after the reply
                trace.enqueued_ns = time.perf_counter_ns()
                complete = functools.partial(_complete_traced, trace, mv, request_id, received_ns, complete,
                                             reply is not None)
            if mv.traffic is not None:  # side work (shadow, canary counts) after the reply is handed over
                complete = mv.traffic.observe(mv, feeds, rows, names, params, request_id, received_ns, complete,
                                              traffic_key)
            if mv.lineage is not None:  # the prediction log (lineage/), after the reply is handed over
                canary = mv.traffic.canary if mv.traffic is not None else None
                complete = mv.lineage.observe(mv, feeds, rows, names, request_id,
                                              canary.arm_of(mv.version) if canary is not None else None, complete)
            running = mv.scheduler.start(feeds, names, rows, priority, timeout_us, deadline, complete, watch)
        except BaseException as exc:
            if mv.fallback is not None and mv.fallback.reason_for(exc) is not None:
                served = _fallback_at_once(mv, exc, decoded, tensors, raw, output_names, request_id, received_ns,
                                           reply, deliver)
                if served is not None:
                    return served
            mv.stats.record_request(False, time.perf_counter_ns() - received_ns, 0, failure_reason(exc))
            mv.leave()
            if trace is not None:
                trace.finish(mv, request_id, received_ns, 0, time.perf_counter_ns(), exc)
            raise
        return running if result is None else result

    # -- statistics ----------------------------------------------------------------------------------
    async def statistics_everywhere(self, req: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        """The statistics a client should see: this process's own, or with ``--workers`` every worker's summed
        (workers/cluster.py replaces this method); what ModelStatistics answers on gRPC and REST alike."""
        return self.statistics(req)

    def statistics(self, req: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        resp = pb.ModelStatisticsResponse()
        if req.name:
            self.repository.get(req.name, req.version)  # raises for unknown models and versions
            names = [req.name]
        else:
            names = sorted(self.repository.models)
        for name in names:
            model = self.repository.models[name]
            versions = [int(req.version)] if req.version else sorted(model.serving)
            for v in versions:
                mv = model.serving.get(v)
                if mv is not None:
                    resp.model_stats.append(stats_message(mv))
        return resp

    # -- repository ----------------------------------------------------------------------------------
    def repository_index(self, req: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        resp = pb.RepositoryIndexResponse()
        for name, version, state, reason in self.repository.index(req.ready):
            resp.models.add(name=name, version=version, state=state, reason=reason)
        return resp

    async def repository_load(self, req: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        self.repository.check_control()
        config_json = None
        for key, param in req.parameters.items():
            if key == "config":
                if param.WhichOneof("parameter_choice") != "string_param":
                    raise InvalidArgument("load parameter 'config' must be a string holding a JSON ModelConfig")
                config_json = param.string_param
            else:
                raise InvalidArgument(
                    f"unsupported load parameter '{key}': only 'config' (a JSON ModelConfig) is supported")
        await self.repository.load(req.model_name, config_json)
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(self, req: pb.RepositoryModelUnloadRequest) -> pb.RepositoryModelUnloadResponse:
        self.repository.check_control()
        await self.repository.unload(req.model_name)
        return pb.RepositoryModelUnloadResponse()


def _complete(target: Deliver | asyncio.Future, mv: ModelVersion, names: list[str], received_ns: int,
              reply: tuple[str, bytes | None] | None, outcome, exc: BaseException | None, cancelled: bool) -> None:
    """Completion of a queued or running request (the model's hook): statistics, in-flight count, and the
    outcome handed to ``target``, a deliver callback or the caller's future. A cancelled request delivers
    nothing; its future is cancelled (it may have been dropped for a stream's end, not its own)."""
    is_future = isinstance(target, asyncio.Future)
    ok = False
    queue_ns = 0
    reason = "cancelled"
    try:
        if cancelled:
            if is_future:
                target.cancel()
            return
        if exc is None:
            arrays, queue_ns, _ = outcome
            try:
                value = (names, arrays) if reply is None else _reply_bytes(mv, reply[0], reply[1], names, arrays)
                ok = True
            except Exception as e:
                exc = e
        if not ok:
            reason = failure_reason(exc)
        if is_future:
            settle(target, value if ok else None, exc)
        else:
            target(value if ok else None, exc)
    finally:
        if ok and type(outcome[0]) is FallbackArrays:  # answered, but the model failed: counted as it failed
            ok, reason = False, outcome[0].failure
        mv.stats.record_request(ok, time.perf_counter_ns() - received_ns, queue_ns, reason)
        mv.leave()


def _complete_traced(trace: RequestTrace, mv: ModelVersion, request_id: str, received_ns: int,
                     complete: Callable[[Any, BaseException | None, bool], None], encodes: bool, outcome,
                     exc: BaseException | None, cancelled: bool) -> None:
    """_complete for a sampled request: the batch that ran it and the reply's encoding are noted, and the
    trace finished (its spans are built after this, off the reply's way). Without ``encodes`` the caller
    encodes the reply and finishes the trace itself, unless the request failed."""
    if not cancelled and exc is None:
        trace.batch = outcome[2]
    t = time.perf_counter_ns()
    complete(outcome, exc, cancelled)
    if cancelled:
        return
    if exc is not None:
        trace.finish(mv, request_id, received_ns, 0, t, exc)
    elif encodes:
        trace.finish(mv, request_id, received_ns, t, time.perf_counter_ns())


def _with_fallback(fallback: Fallback, feeds: dict[str, np.ndarray], rows: int, names: list[str],
                   complete: Callable[[Any, BaseException | None, bool], None], outcome,
                   exc: BaseException | None, cancelled: bool) -> None:
    """The fallback hook (only on models that configure one): a failure it covers completes with its outputs."""
    if exc is not None and not cancelled:
        reason = fallback.reason_for(exc)
        if reason is not None and fallback.model is not None:
            if _run_fallback_model(fallback, feeds, rows, names, complete, outcome, exc, reason):
                return
        elif reason is not None:
            try:
                outcome = (fallback.compute(feeds, rows, names, reason, failure_reason(exc)), 0, None)
                exc = None
            except Exception:
                log.exception("model %s: its fallback failed; the request fails as the model did", fallback.label)
    elif not cancelled:
        fallback.answered()
    complete(outcome, exc, cancelled)


def _run_fallback_model(fallback: Fallback, feeds: dict[str, np.ndarray], rows: int, names: list[str],
                        complete: Callable[[Any, BaseException | None, bool], None], outcome,
                        exc: BaseException, reason: str) -> bool:
    """Run the failed request on the fallback model; its answer (or, failing that, the original error) goes
    to ``complete`` later. False when it cannot be started (the caller completes with the error)."""
    other = fallback.target(names)
    if other is None:
        return False

    def done(result, error: BaseException | None, cancelled: bool) -> None:
        other.leave()
        if error is None and not cancelled:
            arrays = fallback.served(list(result[0]), reason, failure_reason(exc))
            complete((arrays, 0, None), None, False)
        else:
            if error is not None:
                log.error("model %s: fallback model %s failed too: %s", fallback.label, other.label, error)
            complete(outcome, exc, False)

    other.enter()
    try:
        other.scheduler.start(feeds, names, rows, 0, None, None, done)
    except Exception as start_error:
        other.leave()
        log.error("model %s: fallback model %s refused the request: %s", fallback.label, other.label, start_error)
        return False
    return True


def _fallback_at_once(mv: ModelVersion, exc: BaseException, decoded: tuple | None, tensors, raw,
                      output_names: list[str], request_id: str, received_ns: int,
                      reply: tuple[str, bytes | None] | None, deliver: Deliver | None) -> asyncio.Future | None:
    """A request refused at arrival (overload, full queue) answered by the model's fallback: the future the
    caller expects (done), or None when its inputs cannot be decoded (then the original error stands)."""
    try:
        if decoded is not None:
            feeds, rows, names = decoded
        else:
            feeds, rows = decode_inputs(tensors, raw, mv)
            names = requested_outputs(output_names, mv)
    except Exception:
        return None
    result = asyncio.get_running_loop().create_future()
    complete = functools.partial(_complete, deliver or result, mv, names, received_ns, reply)
    _with_fallback(mv.fallback, feeds, rows, names, complete, None, exc, False)
    if deliver is not None:
        result.set_result(None)
    return result


def failure_reason(exc: BaseException | None) -> str:
    """Why a request failed, for the statistics (models/stats.py's TRITON_REASONS): a domain error says."""
    if isinstance(exc, SkewlessError):
        return exc.reason
    return "cancelled" if isinstance(exc, asyncio.CancelledError) else "other"


def _deliver_outcome(deliver: Deliver, future: asyncio.Future) -> None:
    if not future.cancelled():
        exc = future.exception()
        deliver(None if exc is not None else future.result(), exc)


def _reply_bytes(mv: ModelVersion, request_id: str, tag: bytes | None, names: list[str],
                 arrays: list[np.ndarray]) -> bytes:
    if type(arrays) is FallbackArrays:  # flagged in the reply's parameters: rare, so the general encoder
        resp = encode_response(request_id, mv, names, arrays)
        if tag is not None:
            return pb.ModelStreamInferResponse(infer_response=resp).SerializeToString()
        return resp.SerializeToString()
    extra = mv.reply_parameters
    if extra is not None:  # ModelInferResponse.parameters appended (fields may come in any order), then wrapped
        inner = _reply_bytes_plain(mv, request_id, None, names, arrays) + extra
        return inner if tag is None else b"".join((tag, _varint(len(inner)), inner))
    return _reply_bytes_plain(mv, request_id, tag, names, arrays)


def _reply_bytes_plain(mv: ModelVersion, request_id: str, tag: bytes | None, names: list[str],
                       arrays: list[np.ndarray]) -> bytes:
    data = mv.plan.reply(mv.name, mv.version_text, request_id, names, arrays, tag) if mv.plan is not None else None
    if data is None:
        data = build_infer_response(mv.name, mv.version_text, request_id, output_tensors(mv, names, arrays), tag)
    return data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def reply_parameters(spec_hash: str | None) -> bytes | None:
    """The serialized ``parameters`` entry (field 4) carrying the feature spec's hash, built once per version."""
    if spec_hash is None:
        return None
    return pb.ModelInferResponse(parameters={SPEC_HASH_PARAM: pb.InferParameter(string_param=spec_hash)}
                                 ).SerializeToString()


def scheduling_parameters(params) -> tuple[int, int | None]:
    """Triton's ``priority`` (0 = the model's default level) and ``timeout`` (microseconds) parameters.

    ``params`` maps names to plain values (native parser) or to InferParameter messages (protobuf)."""
    values = []
    for key in ("priority", "timeout"):
        if key not in params:
            values.append(None)
            continue
        value = params[key]
        if isinstance(value, pb.InferParameter):
            which = value.WhichOneof("parameter_choice")
            value = getattr(value, which) if which in ("int64_param", "uint64_param") else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgument(f"request parameter '{key}' must be a non-negative integer (int64 or uint64)")
        values.append(int(value))
    return values[0] or 0, values[1]


def _check_shape(name: str, spec: TensorSpec, shape: list[int], mv: ModelVersion) -> None:
    expected = [-1, *spec.dims] if mv.max_batch_size > 0 else list(spec.dims)
    if len(shape) != len(expected) or any(e != -1 and e != s for e, s in zip(expected, shape, strict=True)):
        raise InvalidArgument(
            f"unexpected shape for input '{name}' for model '{mv.name}'. Expected {format_shape(expected)}, "
            f"got {format_shape(shape)}"
        )


def _typed_contents(tensor):
    """Typed contents of a protobuf input tensor, or None (native views and TensorHeaders never carry them)."""
    if isinstance(tensor, (InputTensor, TensorHeader)) or not tensor.HasField("contents"):
        return None
    return tensor.contents if tensor.contents.ListFields() else None


def decode_inputs(tensors, raw, mv: ModelVersion) -> tuple[dict[str, np.ndarray], int]:
    """Validate every input against the model and decode it; returns the feeds and the batch size.

    ``tensors`` are protobuf InferInputTensor messages, native InputTensor views or TensorHeaders (name,
    datatype, shape).
    """
    if raw and len(raw) != len(tensors):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries but the request has {len(tensors)} inputs: "
            "expected one entry per input, in the same order"
        )
    feeds: dict[str, np.ndarray] = {}
    batch: int | None = None
    batching = mv.max_batch_size > 0
    for i, tensor in enumerate(tensors):
        name = tensor.name
        spec = mv.inputs.get(name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected inference input '{name}' for model '{mv.name}': expected inputs are {list(mv.inputs)}")
        if name in feeds:
            raise InvalidArgument(f"input '{name}' is given more than once for model '{mv.name}'")
        if tensor.datatype != spec.datatype.name:
            if tensor.datatype not in DATATYPES:
                raise InvalidArgument(f"unknown datatype '{tensor.datatype}' for inference input '{name}'")
            raise InvalidArgument(
                f"unexpected datatype {tensor.datatype} for inference input '{name}', expecting "
                f"{spec.datatype.name}")
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidArgument(f"input '{name}' has a negative dimension in shape {format_shape(shape)}")
        _check_shape(name, spec, shape, mv)
        if batching:
            if not 1 <= shape[0] <= mv.max_batch_size:
                raise InvalidArgument(
                    f"inference request batch-size must be <= {mv.max_batch_size} for '{mv.name}' and >= 1, "
                    f"got {shape[0]} for input '{name}'")
            if batch is None:
                batch = shape[0]
            elif shape[0] != batch:
                raise InvalidArgument(
                    f"input '{name}' has batch size {shape[0]} but an earlier input has {batch}: "
                    "all inputs of a request must share the batch dimension")
        typed = _typed_contents(tensor)
        if raw:
            if typed is not None:
                raise InvalidArgument(
                    f"input '{name}' has both raw_input_contents and typed contents: send exactly one of them")
            if mv.features is not None and spec.datatype.name == "BYTES":  # kept as wire bytes, no str objects
                arr = mv.features.bytes_payload(name, shape, raw[i])
            else:
                arr = decode_raw(name, spec.datatype, shape, raw[i])
        elif typed is not None or element_count(shape) == 0:
            arr = decode_typed(name, spec.datatype, shape, typed if typed is not None else pb.InferTensorContents())
        else:
            raise InvalidArgument(f"input '{name}' carries no data: expected raw_input_contents or typed contents")
        if spec.reshape is not None:
            arr = _apply_reshape(arr, spec.reshape, batching, f"input '{name}'")
        feeds[name] = arr
    if len(feeds) != len(mv.inputs) and (mv.features is None or not feeds.keys() >= mv.features.raw_names):
        names = [t.name for t in tensors]
        missing = [n for n in mv.inputs if n not in feeds]
        expected = len(mv.inputs)
        if mv.features is not None:  # the NAME__missing companions are optional (features/missing.py)
            missing, expected = missing_raw(mv.features, feeds)
        raise InvalidArgument(
            f"expected {expected} inputs but got {len(tensors)} inputs for model '{mv.name}'. "
            f"Got input(s) {names}, but missing required input(s) {missing}. Please provide all required input(s).")
    return feeds, batch if batch is not None else 1


def _apply_reshape(arr: np.ndarray, shape: tuple[int, ...], batching: bool, what: str) -> np.ndarray:
    """Triton's ``reshape``: clients see ``dims``, the model sees ``reshape`` (batch dimension kept)."""
    target = [arr.shape[0], *shape] if batching else list(shape)
    try:
        return arr.reshape(target)
    except ValueError:
        raise InvalidArgument(
            f"{what} of shape {format_shape(arr.shape)} cannot be reshaped to {format_shape(target)}") from None


def requested_outputs(names: list[str], mv: ModelVersion) -> list[str]:
    if not names:
        return mv.output_names
    out: list[str] = []
    for name in names:
        if name not in mv.outputs:
            raise InvalidArgument(
                f"unexpected inference output '{name}' for model '{mv.name}': expected outputs are "
                f"{mv.output_names}")
        if name not in out:
            out.append(name)
    return out


def _check_output_parameters(req: pb.ModelInferRequest) -> None:
    _check_classification((o.name, o.parameters) for o in req.outputs)


def _check_classification(outputs) -> None:
    """``outputs``: (name, parameters) pairs of the requested outputs."""
    for name, parameters in outputs:
        if "classification" in parameters:
            raise InvalidArgument(
                f"output '{name}' asks for classification, which skewless does not implement; "
                "request the raw output instead")


def output_tensors(mv: ModelVersion, names: list[str], arrays: list[np.ndarray]) -> list[tuple]:
    """(name, datatype, shape, payload) per output, payload being any buffer the reply copies from."""
    out = []
    batching = mv.max_batch_size > 0
    for name, arr in zip(names, arrays, strict=True):
        spec = mv.outputs[name]
        if spec.reshape is not None:
            arr = _apply_reshape(arr, spec.dims, batching, f"output '{name}'")
        dt = spec.datatype
        if dt.name == "BYTES":
            payload = encode_array(arr, dt)
        else:
            payload = arr if arr.dtype == dt.numpy and arr.flags.c_contiguous else np.ascontiguousarray(arr, dt.numpy)
        out.append((name, dt.name, arr.shape, payload))
    return out


def encode_response(req_id: str, mv: ModelVersion, names: list[str],
                    arrays: list[np.ndarray]) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name=mv.name, model_version=str(mv.version), id=req_id)
    if mv.features is not None:
        resp.parameters[SPEC_HASH_PARAM].string_param = mv.features.spec.sha256
    for name, datatype, shape, payload in output_tensors(mv, names, arrays):
        resp.outputs.add(name=name, datatype=datatype, shape=shape)
        resp.raw_output_contents.append(payload if isinstance(payload, bytes) else payload.tobytes())
    if type(arrays) is FallbackArrays:
        resp.parameters["fallback"].string_param = arrays.reason
    return resp


def _duration(d: Duration, msg) -> None:
    msg.count, msg.ns = d.count, d.ns


def stats_message(mv: ModelVersion) -> pb.ModelStatistics:
    s: ModelStats = mv.stats
    m = pb.ModelStatistics(name=mv.name, version=str(mv.version), last_inference=s.last_inference_ms,
                           inference_count=s.inference_count, execution_count=s.execution_count)
    st = m.inference_stats
    for attr in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        _duration(getattr(s, attr), getattr(st, attr))
    for size in sorted(s.by_batch_size):
        b = s.by_batch_size[size]
        bm = m.batch_stats.add(batch_size=size)
        _duration(b.compute_input, bm.compute_input)
        _duration(b.compute_infer, bm.compute_infer)
        _duration(b.compute_output, bm.compute_output)
    return m


__all__ = ["DataPlane", "TensorHeader"]

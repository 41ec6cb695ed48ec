"""The data plane: one method per RPC, protocol messages in and out, domain errors raised.

The transports (frontend/) adapt gRPC and HTTP/REST to these calls. An inference request goes: transport ->
an entry point here (parse, route to a version, build one Request: request.py) -> ``submit`` (decode.py
validates and decodes; the version's scheduler batches and runs it: batching/, models/) -> the Request's
completion (encode.py encodes the reply) -> transport. Side modules attach through server/hooks.py only.

The three entry points are one route (``submit``) with one result type per reply encoding the Request asks
for, kept apart on purpose: gRPC's hot path (``infer_bytes``) has its reply bytes encoded natively in the
completion, straight from the batch's arrays (a stream needs no task per message, and the bytes are built
before the caller wakes); its typed-contents case (``_infer_message``) needs the protobuf encoder; REST
(``infer_tensors``) needs the arrays themselves to write JSON or binary. Returning one reply type to all three
would add an object and an encoding step to the hot path, or move the encoding off the completion.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np

from skewless.protos import grpc_service_pb2 as pb

from .decode import (
    TensorHeader,
    check_classification,
    check_output_parameters,
    events_feeds,
    parse_message,
    request_feeds,
    scheduling_parameters,
)
from .encode import STREAM_TAG, encode_response, stats_message
from .errors import InvalidArgument, Overloaded, Unavailable
from .hooks import Complete, Trace
from .models.overrides import FILE_PREFIX
from .models.repository import ModelRepository
from .models.stats import failure_reason
from .models.version import ModelVersion
from .peers import PeerFailure, Peers, peer_error
from .request import Deliver, Request
from .request_ids import assign_id
from .shm import cuda
from .shm.control import SharedMemory
from .shm.tensors import input_buffers, output_targets, uses_shared_memory

SERVER_NAME = "skewless"
# Only what is really implemented: tritonclient and perf_analyzer branch on these names.
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "binary_tensor_data"]
# Peer keys of the control calls a worker forwards to its siblings (served by workers/cluster.py)
LOAD_KEY = "dataplane/repository_load"
UNLOAD_KEY = "dataplane/repository_unload"
# Shared-memory registrations a worker forwards to its siblings: (peer key, SharedMemory method, request class)
SHM_KEYS = (
    ("dataplane/shm_system_register", "system_register", pb.SystemSharedMemoryRegisterRequest),
    ("dataplane/shm_system_unregister", "system_unregister", pb.SystemSharedMemoryUnregisterRequest),
    ("dataplane/shm_cuda_register", "cuda_register", pb.CudaSharedMemoryRegisterRequest),
    ("dataplane/shm_cuda_unregister", "cuda_unregister", pb.CudaSharedMemoryUnregisterRequest),
)


def server_version() -> str:
    try:
        return metadata.version("skewless")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


class DataPlane:
    def __init__(self, repository: ModelRepository, key_header: str | None = None, peers: Peers | None = None,
                 allow_client_shm: bool = False):
        self.repository = repository
        self.accepting = True
        # --workers N: the sibling workers (workers/cluster.py); control calls, statistics and readiness span
        # all of them. None: a single process.
        self.peers = peers
        # The header (gRPC metadata / HTTP) naming the caller for shadow sampling and canary arms; None: the
        # transports read no header for it.
        self.key_header = key_header.lower() if key_header else None
        # What ServerMetadata announces: the wiring adds the extensions whose side modules it attached.
        self.extensions = list(EXTENSIONS)
        self.shm = SharedMemory(allow_client_shm)  # client-registered shared-memory regions (shm/), this process's

    # -- health and metadata -------------------------------------------------------------------------
    def server_live(self) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def server_ready(self) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.is_ready())

    def is_ready(self) -> bool:
        """Triton's strict readiness: accepting requests, and every model meant to serve has a ready version."""
        if not self.accepting:
            return False
        ready = all(m.serving for m in self.repository.models.values() if m.wanted)
        return ready and (self.peers is None or self.peers.all_ready())

    def model_ready(self, req: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.repository.is_ready(req.name, req.version))

    def server_metadata(self) -> pb.ServerMetadataResponse:
        extensions = list(self.extensions)
        if self.shm.allowed:
            extensions.append("system_shared_memory")
            if cuda.available():
                extensions.append("cuda_shared_memory")
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=extensions)

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

    # -- inference: each transport's entry point builds one Request, and submit() takes it from there ----
    def infer_bytes(self, data: bytes, received_ns: int | None = None, time_remaining_s: float | None = None,
                    stream: bool = False, deliver: Deliver | None = None,
                    watch: asyncio.Future | None = None, trace: Trace | None = None,
                    traffic_key: str | None = None) -> asyncio.Future:
        """gRPC's ModelInfer and stream messages: request bytes in, a future of the reply bytes out, no
        protobuf objects in between (the hot path).

        Synchronous up to the model's queue, so a stream can submit each message without a task of its own.
        Requests rejected at once raise here; later failures come through the future, or with ``deliver``
        (a stream's callback, given (reply, None) or (None, error); nothing if cancelled) instead of it: the
        returned future then only serves to cancel. ``stream`` wraps the reply as
        ModelStreamInferResponse.infer_response (field 2). With ``deliver``, a queued request is dropped
        uncomputed once ``watch`` (a stream's own future) is cancelled. ``trace``: a sampled request's trace
        (None, the common case, costs nothing), finished once the reply is encoded. ``traffic_key``: the
        caller's key from a header (--traffic-key-header), for shadow sampling and canary arms.
        """
        received_ns = received_ns or time.perf_counter_ns()
        req = parse_message(data)
        if req.has_contents or req.output_parameters:  # typed contents, output parameters: the protobuf path
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
        return self.submit(Request(mv, req.id or assign_id(""), received_ns, req.inputs, req.raw, req.outputs,
                                   req.parameters, decoded=decoded, time_remaining_s=time_remaining_s,
                                   encodes=True, tag=STREAM_TAG if stream else None, deliver=deliver,
                                   watch=watch, trace=trace, traffic_key=traffic_key))

    async def _infer_message(self, data: bytes, received_ns: int, time_remaining_s: float | None,
                             stream: bool, watch: asyncio.Future | None, trace: Trace | None = None,
                             traffic_key: str | None = None) -> bytes:
        """The general path, for protobuf messages (typed contents, output parameters). Cancelling ``watch``
        (by default: cancelling this coroutine) drops the request while it is queued."""
        req = pb.ModelInferRequest.FromString(data)
        targets = output_targets(self.shm.table, {o.name: o.parameters for o in req.outputs})
        check_output_parameters(req)
        rid = assign_id(req.id)
        mv = self.repository.get(req.model_name, req.model_version)
        if mv.traffic is not None and not req.model_version:
            mv = mv.traffic.route(mv, req.parameters, req.id, traffic_key)
        names, arrays = await self.submit(Request(
            mv, rid, received_ns, req.inputs, req.raw_input_contents, [o.name for o in req.outputs],
            req.parameters, time_remaining_s=time_remaining_s, watch=watch, trace=trace, traffic_key=traffic_key))
        t = time.perf_counter_ns() if trace is not None else 0
        resp = encode_response(rid, mv, names, arrays, targets)
        if trace is not None:
            trace.finish(mv, rid, received_ns, t, time.perf_counter_ns())
        if stream:
            return pb.ModelStreamInferResponse(infer_response=resp).SerializeToString()
        return resp.SerializeToString()

    async def infer_tensors(self, model_name: str, model_version: str, inputs: Sequence[TensorHeader],
                            raw: Sequence[bytes | memoryview], output_names: Sequence[str] = (),
                            output_parameters: Mapping[str, Mapping[str, Any]] | None = None,
                            params: Mapping[str, Any] | None = None, request_id: str = "",
                            received_ns: int | None = None, trace: Trace | None = None,
                            traffic_key: str | None = None) -> tuple[ModelVersion, list[str], list[np.ndarray]]:
        """For transports that are not protobuf (HTTP/REST): inputs as headers plus one raw little-endian
        buffer each (BYTES length-prefixed, as on the gRPC wire), so every check and message is the gRPC
        path's. ``params`` are plain values (``priority``, ``timeout`` in µs); ``output_parameters`` the
        requested outputs' own. Returns the version that ran, the output names and their arrays; a ``trace``
        is finished by the caller, which encodes the reply (on failure, here)."""
        received_ns = received_ns or time.perf_counter_ns()
        if output_parameters:
            check_classification((name, p) for name, p in output_parameters.items())
        mv = self.repository.get(model_name, model_version)
        if mv.traffic is not None and not model_version:
            mv = mv.traffic.route(mv, params, request_id, traffic_key)
        names, arrays = await self.submit(Request(mv, assign_id(request_id), received_ns, inputs, raw,
                                                  list(output_names), params, trace=trace,
                                                  traffic_key=traffic_key))
        return mv, names, arrays

    def submit(self, request: Request) -> asyncio.Future:
        """Validate and decode ``request`` (unless the plan decoded it), then queue or run it: a future of its
        outcome (reply bytes, or output names and arrays); or, with a ``deliver`` callback, the outcome handed to
        it and the running request's own handle returned (to cancel it). Counts the request in flight and in
        the statistics until it completes; the side modules' hooks wrap its completion (server/hooks.py)."""
        mv = request.mv
        mv.enter()
        try:
            total = mv.total
            if total.limit and total.n > total.limit:
                raise Overloaded(f"server busy: {total.limit} requests are already in flight (its --max-inflight "
                                 "limit); retry later")
            if request.decoded is not None:
                feeds, rows, names = request.decoded
            else:
                if uses_shared_memory(request.tensors):  # inputs read from registered regions (shm/)
                    request.raw = input_buffers(self.shm.table, request.tensors, request.raw, mv.name)
                feeds, rows, names = request_feeds(mv, request.tensors, request.raw, request.output_names,
                                                   request.id)
            request.names = names
            request.rows = rows
            params = request.params
            priority, timeout_us = scheduling_parameters(params) if params else (0, None)
            deadline = None
            if request.time_remaining_s is not None:
                deadline = request.deadline = asyncio.get_running_loop().time() + request.time_remaining_s
            result = None
            watch = request.watch
            if request.deliver is None:
                result = asyncio.get_running_loop().create_future()
                request.target = result
                if watch is None:
                    watch = result
            else:
                request.target = request.deliver
            complete: Complete = request
            if mv.fallback is not None:  # fallback/: failures answered by a constant or rule, flagged
                complete = mv.fallback.wrap(feeds, rows, names, complete)
            trace = request.trace
            if trace is not None:  # sampled: note the hand-off to the scheduler, finish after the reply
                trace.enqueued_ns = time.perf_counter_ns()
                request.inner = complete
                complete = request.traced
            if mv.traffic is not None:  # side work (shadow, canary counts) after the reply is handed over
                complete = mv.traffic.observe(mv, feeds, rows, names, params, request.id, request.received_ns,
                                              complete, request.traffic_key)
            if mv.lineage is not None:  # the prediction log (lineage/), after the reply is handed over
                arm = mv.traffic.arm_of(mv.version) if mv.traffic is not None else None
                complete = mv.lineage.observe(mv, feeds, rows, names, request.id, arm, complete)
            running = mv.scheduler.start(feeds, names, rows, priority, timeout_us, deadline, complete, watch)
        except BaseException as exc:
            if mv.fallback is not None and mv.fallback.reason_for(exc) is not None:
                served = _fallback_at_once(request, exc)
                if served is not None:
                    return served
            mv.stats.record_request(False, time.perf_counter_ns() - request.received_ns, 0, failure_reason(exc))
            mv.leave()
            if request.trace is not None:
                request.trace.finish(mv, request.id, request.received_ns, 0, time.perf_counter_ns(), exc)
            raise
        return running if result is None else result

    # -- events for windowed aggregates (issue 29): recorded in the model's state, never scored -----------
    async def ingest_events(self, model_name: str, model_version: str, tensors, raw):
        """Decode an events request (any subset of the raw inputs) as an inference request is decoded, then
        record it in the model's aggregate state on an executor thread. Returns the feature stage's
        IngestCounts (recorded, late, skipped)."""
        if not self.accepting:
            raise Unavailable("the server is shutting down and takes no more events")
        mv = self.repository.get(model_name, model_version)
        if mv.features is None or not mv.features.has_aggregates:
            raise InvalidArgument(f"model '{mv.name}' has no windowed aggregates in its feature spec: it takes no "
                                  "events (send them to a model whose features.json lists aggregates)")
        if uses_shared_memory(tensors):
            raw = input_buffers(self.shm.table, tensors, raw, mv.name)
        feeds = events_feeds(mv, tensors, raw)
        mv.enter()  # the version closes (and saves its state) only after this call is done
        try:
            return await asyncio.get_running_loop().run_in_executor(None, mv.features.ingest, feeds)
        finally:
            mv.leave()

    # -- shared memory (Triton's system and CUDA shared-memory extensions; shm/) ------------------------
    async def shm_register(self, method: str, req) -> Any:
        """Register or unregister a region here (``method``: a SharedMemory method named in SHM_KEYS), then on
        every sibling worker, so requests reach it whichever worker they land on."""
        reply = getattr(self.shm, method)(req)
        for key, name, _ in SHM_KEYS:
            if name == method:
                await self._everywhere(key, req)
        return reply

    # -- statistics ----------------------------------------------------------------------------------
    async def statistics_everywhere(self, req: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        """The statistics a client should see: this process's own, or with ``--workers`` every worker's summed;
        what ModelStatistics answers on gRPC and REST alike."""
        own = self.statistics(req)
        if self.peers is None:
            return own
        try:
            return await self.peers.statistics(req, own)
        except PeerFailure as exc:
            raise peer_error(exc.code, exc.message) from None

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
        """Load (or reload) a model here, then on every sibling worker."""
        reply = await self.repository_load_here(req)
        await self._everywhere(LOAD_KEY, req)
        return reply

    async def repository_unload(self, req: pb.RepositoryModelUnloadRequest) -> pb.RepositoryModelUnloadResponse:
        """Unload a model here, then on every sibling worker."""
        reply = await self.repository_unload_here(req)
        await self._everywhere(UNLOAD_KEY, req)
        return reply

    async def apply_everywhere(self, key: str, req) -> None:
        """Forward control call ``req`` (already applied here) to every sibling worker, if any."""
        await self._everywhere(key, req)

    async def _everywhere(self, key: str, req) -> None:
        if self.peers is not None:
            try:
                await self.peers.apply(key, req)
            except PeerFailure as exc:
                raise peer_error(exc.code, f"applied on worker {self.peers.index}, not on all: "
                                           f"{exc.message}") from None

    async def repository_load_here(self, req: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        self.repository.check_control()
        config_json, files = None, {}
        for key, param in req.parameters.items():
            if key == "config":
                if param.WhichOneof("parameter_choice") != "string_param":
                    raise InvalidArgument("load parameter 'config' must be a string holding a JSON ModelConfig")
                config_json = param.string_param
            elif key.startswith(FILE_PREFIX):  # Triton's file overrides (models/overrides.py)
                if param.WhichOneof("parameter_choice") != "bytes_param":
                    raise InvalidArgument(f"load parameter '{key}' must hold the file's content as bytes "
                                          "(base64 over HTTP/REST)")
                files[key[len(FILE_PREFIX):]] = param.bytes_param
            else:
                raise InvalidArgument(f"unsupported load parameter '{key}': only 'config' (a JSON ModelConfig) "
                                      "and 'file:<version>/<file>' are supported")
        if files and config_json is None:
            raise InvalidArgument(f"failed to load '{req.model_name}': 'file:' load parameters need a 'config' "
                                  "parameter, the model configuration of the files' model directory")
        await self.repository.load(req.model_name, config_json, files or None)
        return pb.RepositoryModelLoadResponse()

    def load_request(self, name: str) -> pb.RepositoryModelLoadRequest:
        """The load request that reproduces what serves as ``name`` here (config override and override files
        included), for a restarted sibling worker to catch up with."""
        req = pb.RepositoryModelLoadRequest(model_name=name)
        config_json, files = self.repository.load_parameters(name)
        if config_json is not None:
            req.parameters["config"].string_param = config_json
        for rel, data in files.items():
            req.parameters[FILE_PREFIX + rel].bytes_param = data
        return req

    async def repository_unload_here(self, req: pb.RepositoryModelUnloadRequest
                                     ) -> pb.RepositoryModelUnloadResponse:
        self.repository.check_control()
        await self.repository.unload(req.model_name)
        return pb.RepositoryModelUnloadResponse()


def _fallback_at_once(request: Request, exc: BaseException) -> asyncio.Future | None:
    """A request refused at arrival (overload, full queue) answered by its model's fallback: the future the
    caller expects (done), or None when its inputs cannot be decoded (then the original error stands)."""
    mv = request.mv
    try:
        if request.decoded is not None:
            feeds, rows, names = request.decoded
        else:
            feeds, rows, names = request_feeds(mv, request.tensors, request.raw, request.output_names,
                                               request.id, admit=False)
    except Exception:
        return None
    result = asyncio.get_running_loop().create_future()
    request.names = names
    request.target = request.deliver or result
    mv.fallback.answer(feeds, rows, names, request, exc)
    if request.deliver is not None:
        result.set_result(None)
    return result


def _deliver_outcome(deliver: Deliver, future: asyncio.Future) -> None:
    if not future.cancelled():
        exc = future.exception()
        deliver(None if exc is not None else future.result(), exc)


__all__ = ["DataPlane", "TensorHeader"]

"""A loaded model version: its completed config, tensor specs, runtime and statistics."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np

from skewless.native.batch_merge import merge_column, split_rows
from skewless.native.v2_codec import DecodePlan
from skewless.protos import grpc_service_pb2 as pb
from skewless.protos import model_config_pb2 as mc

from ..batching.cost import BatchCost
from ..batching.runner import BatchRunner
from ..batching.scheduler import Scheduler
from ..errors import Internal, ModelLoadError
from ..features.stage import FeatureStage
from ..hooks import BatchObserver, FailureAnswer, ReplyObserver, Router
from ..parameters import read, unknown
from ..security.paths import contained, plain_file_name
from .config import TensorSpec, complete_config, tensor_specs
from .runtime import ModelRuntime, probe_model_io
from .stats import ModelStats
from .warmup import warmup_samples

log = logging.getLogger(__name__)

DEFAULT_MODEL_FILE = "model.onnx"
SPEC_HASH_PARAM = "skewless.feature_spec_hash"  # reply parameter naming the feature spec that served it
INLINE_PARAMETER = "skewless.inline_compute_us"  # batches expected to be faster run on the event loop
IDLE_INLINE_PARAMETER = "skewless.idle_inline_us"  # the same, while no other request is in flight
TIMEOUT_PARAMETER = "skewless.instance_timeout_s"  # the watchdog: a batch running longer fails, instance restarts


def merge_rows(feeds: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    """One input of a batch's requests, concatenated along the batch dimension."""
    first = feeds[0][name]
    if not first.dtype.hasobject:
        try:  # one native loop of memcpys: np.concatenate's per-array checks cost more on 1-row requests
            return merge_column(feeds, name, first.dtype).reshape((-1, *first.shape[1:]))
        except TypeError:  # a non-contiguous or differently typed part: numpy handles (or refuses) it
            pass
    return np.concatenate([f[name] for f in feeds])


def model_file(version_dir: Path, cfg: mc.ModelConfig) -> Path:
    return version_dir / plain_file_name(cfg.default_model_filename or DEFAULT_MODEL_FILE, "default_model_filename")


class InFlightTotal:
    """Requests in flight across every version that shares it: the server's global limit (0: none)."""

    __slots__ = ("n", "limit")

    def __init__(self, limit: int = 0):
        self.n = 0
        self.limit = limit


class ModelVersion:
    """Everything needed to serve one version; immutable once ready, retired by the repository."""

    def __init__(self, name: str, version: int, version_dir: Path, base_config: mc.ModelConfig,
                 explicit_max_batch_size: bool, default_max_batch_size: int):
        self.name = name
        self.version = version
        self.path = model_file(version_dir, base_config)
        if not self.path.is_file():
            raise ModelLoadError(f"model file {self.path} does not exist")
        contained(self.path, version_dir, "model file")
        onnx_in, onnx_out = probe_model_io(self.path)
        # features.json beside the model: clients send its raw inputs, the kernel feeds onnx_in
        self.features = FeatureStage.load(version_dir, base_config, onnx_in, name, version)
        if self.features is not None:
            onnx_in = self.features.raw_tensors
        self.config = complete_config(base_config, name, onnx_in, onnx_out, explicit_max_batch_size,
                                      default_max_batch_size)
        for line in unknown(self.config.parameters):
            log.warning("model '%s' version %d: %s", name, version, line)
        if self.features is not None:
            self.features.check_config(self.config)
        self.inputs: dict[str, TensorSpec] = tensor_specs(self.config.input)
        self.outputs: dict[str, TensorSpec] = tensor_specs(self.config.output)
        self.output_names = list(self.outputs)
        self.max_batch_size = self.config.max_batch_size
        self.version_text = str(version)
        # Reply parameters every reply of this version carries (serialized, appended to the fast path's reply):
        # the feature spec's hash when a spec is in use.
        self.reply_parameters = _reply_parameters(self.features.spec.sha256 if self.features is not None else None)
        self.fixed_shapes = all(-1 not in s.dims for s in self.inputs.values())
        self.plan = self._decode_plan()
        # Side modules attach through these slots (server/hooks.py), set by the repository's version hooks;
        # None unless the model uses one, and then the request path's only cost is that check.
        # The reply's error branch (fallback/): None unless config.pbtxt sets skewless.fallback.
        self.fallback: FailureAnswer | None = None
        self.stats = ModelStats()
        self.runtime = ModelRuntime(self.path, self.config, f"{name}-{version}")
        self._inflight = 0
        self.total = InFlightTotal()  # the server's shared count, set by its version hook
        self._idle: asyncio.Event | None = None
        # The one hook side modules (drift monitoring) get on the batch path: called with every batch's model
        # inputs and outputs, on the thread that ran it, before the outputs are split. It must return at once
        # (sample, copy what it keeps, queue it): model inputs may be views of buffers reused by the next batch.
        self.batch_observer: BatchObserver | None = None
        # Routing and a reply observer for shadow traffic and canary splits (shadow/traffic.py's ModelTraffic).
        self.traffic: Router | None = None
        # A reply observer for the prediction log (lineage/prediction_log.py's ModelLineage).
        self.lineage: ReplyObserver | None = None
        try:
            # The estimates are CPU time: a GPU run's wall time (a wait on the device) can be far longer, so
            # GPU models never take the idle rule's longer stalls of the loop.
            on_gpu = any(i.placement.kind == "KIND_GPU" for i in self.runtime.instances)
            cost = BatchCost(1000 * read(self.config, INLINE_PARAMETER),
                             0 if on_gpu else 1000 * read(self.config, IDLE_INLINE_PARAMETER))
            # Requests go in through the scheduler (batching/), which runs this version's run_batch: the
            # batching core is handed the work and its cost, and never reaches back into the version.
            timeout_s: float | None = read(self.config, TIMEOUT_PARAMETER)
            runner = BatchRunner(self.run_batch, self.runtime.executor, cost, self.stats.record_execution,
                                 hang_timeout_s=timeout_s or None, on_hang=self._restart_hung, label=self.label,
                                 idle=self._alone_on_server)
            self._runner = runner
            self.scheduler = Scheduler(runner, name, self.label, self.config, len(self.runtime.instances),
                                       self.fixed_shapes)
            self.warm_up(version_dir)
        except ModelLoadError:
            self.runtime.close()
            raise
        except Exception as exc:
            self.runtime.close()
            raise ModelLoadError(f"warmup of model '{name}' version {version} failed: {exc}") from None

    def _decode_plan(self) -> DecodePlan | None:
        """The compiled request decoder, for models whose inputs are all fixed-width and go to the model as
        sent (a feature stage keeps raw BYTES columns as wire bytes, which only the general path does)."""
        if self.features is not None or any(s.datatype.name == "BYTES" for s in self.inputs.values()):
            return None
        inputs = [(s.name, s.datatype.name, s.datatype.numpy, s.dims, s.reshape) for s in self.inputs.values()]
        outputs = [(s.name, s.datatype.name,
                    None if s.datatype.name == "BYTES" or s.reshape is not None else s.datatype.numpy)
                   for s in self.outputs.values()]
        return DecodePlan(inputs, outputs, self.max_batch_size)

    @property
    def label(self) -> str:
        return f"'{self.name}' version {self.version}"

    # -- warmup --------------------------------------------------------------------------------------
    def warm_up(self, version_dir: Path) -> None:
        """Run config.model_warmup samples on every instance before the version is marked ready."""
        for sample, count, feeds in warmup_samples(self.config, self.inputs, version_dir):
            if self.features is not None:  # raw warmup samples -> the model's feature tensors
                feeds = self.features.model_feeds(feeds)
            for _ in range(count):
                self.runtime.run_on_each_instance(self.output_names, feeds)
            log.info("model %s: warmup '%s' done", self.label, sample)

    def _restart_hung(self, thread_id: int) -> None:
        log.error("model %s: a batch exceeded %s; failing its requests and restarting its instance",
                  self.label, TIMEOUT_PARAMETER)
        self.runtime.restart_hung(thread_id)
        self._runner.executor = self.runtime.executor

    # -- in-flight accounting, so a retired version closes only when its last request is done ---------
    @property
    def in_flight(self) -> int:
        return self._inflight

    def enter(self) -> None:
        self._inflight += 1
        self.total.n += 1

    def leave(self) -> None:
        self._inflight -= 1
        self.total.n -= 1
        if self._inflight == 0 and self._idle is not None:
            self._idle.set()

    async def drain_and_close(self) -> None:
        await self.scheduler.close()
        if self._inflight:
            self._idle = asyncio.Event()
            await self._idle.wait()
        await asyncio.get_running_loop().run_in_executor(None, self.runtime.close)
        close_observer = getattr(self.batch_observer, "close", None)
        if close_observer is not None:  # e.g. a drift monitor's worker thread
            await asyncio.get_running_loop().run_in_executor(None, close_observer)
        if self.features is not None:  # flush and close the served-feature log
            await asyncio.get_running_loop().run_in_executor(None, self.features.close)
        log.info("model %s: unloaded", self.label)

    def _alone_on_server(self) -> bool:
        """No request but the one being started is in flight, on any model of the server."""
        return self.total.n <= 1

    def run_off_loop(self) -> None:
        """Never run this version's batches on the event loop, however cheap their CPU time: their work waits
        on the network (a Redis aggregate store's round trip), which would stall every other request."""
        self._runner.cost.inline_limit_ns = self._runner.cost.idle_limit_ns = 0

    def discard(self) -> None:
        """Close a version that never served (its load failed after it was built): sessions, and what its
        hooks attached to the feature stage (the shared aggregate state's reference). Blocking."""
        self.runtime.close()
        if self.features is not None:
            self.features.close()

    # -- execution: the work the scheduler runs, on a worker thread or inline ------------------------
    def run_batch(self, feeds: list[dict[str, np.ndarray]], rows: list[int], output_names: list[str],
                  background: bool = False) -> tuple[list[list[np.ndarray]], tuple[int, int, int]]:
        """Merge the requests' inputs (or transform their raw features), run them as one batch, and split the
        outputs back per request; also the nanoseconds of each phase (compute input, infer, output).
        ``background`` (a shadow challenger's run): the low-priority session, and no batch observer."""
        t0 = time.perf_counter_ns()
        if self.features is not None:  # one kernel call over the batch's raw columns (features_stage)
            merged = self.features.transform_batch(feeds, record=not background)  # a shadow never records
        elif len(feeds) == 1:
            merged = feeds[0]
        else:
            merged = {name: merge_rows(feeds, name) for name in feeds[0]}
        t1 = time.perf_counter_ns()
        outs = (self.runtime.run_background if background else self.runtime.run_sync)(output_names, merged)
        t2 = time.perf_counter_ns()
        observer = None if background else self.batch_observer  # mirrored inputs: the primary observed them
        if observer is not None:
            try:
                observer(merged, output_names, outs)
            except Exception:  # a side module's failure never fails the batch
                log.exception("batch observer of model %s failed", self.label)
        if len(feeds) == 1:
            split = [outs]
        else:
            total = sum(rows)
            for name, arr in zip(output_names, outs, strict=True):
                if arr.ndim == 0 or arr.shape[0] != total:
                    raise Internal(
                        f"output '{name}' of model {self.label} has shape {list(arr.shape)}, whose first "
                        f"dimension is not the batch's {total} rows: it cannot be split between requests")
            split = split_rows(outs, rows)
        t3 = time.perf_counter_ns()
        return split, (t1 - t0, t2 - t1, t3 - t2)


def _reply_parameters(spec_hash: str | None) -> bytes | None:
    """The serialized ``parameters`` entry (field 4) carrying the feature spec's hash, built once per version."""
    if spec_hash is None:
        return None
    return pb.ModelInferResponse(parameters={SPEC_HASH_PARAM: pb.InferParameter(string_param=spec_hash)}
                                 ).SerializeToString()

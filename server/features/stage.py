"""Serving half of the feature core: a version folder with ``features.json`` beside ``model.onnx``.

Clients of such a model send the spec's *raw* inputs (one value per row); the ONNX model's own inputs are
the spec's output tensors, computed by the native kernel and never visible to clients. The pieces:

* load time (``FeatureStage.load``): the spec is read and checked against the ONNX model's inputs (names,
  dtypes, widths), and the raw inputs take the place of the model's inputs in config completion, so
  ModelMetadata / ModelConfig show them and an explicit ``config.pbtxt`` lists them. Raw dtypes on the wire:
  float -> FP64 (the spec computes in double: an FP64 input is exactly what offline ``transform`` reads,
  so served and training tensors are byte-equal; FP32 would round values clients may hold in double),
  int -> INT64, bool -> BOOL, string -> BYTES. Shapes are [-1, 1] (dims [1] with batching).
* request time, on the event loop (``bytes_payload``, ``admit``): BYTES inputs are validated and kept as
  their wire bytes (no Python object per value); row counts are checked, so that every per-request error
  is raised for that request alone before it can join a batch.
* batch time, in ``ModelVersion.run_batch`` (``transform_batch``): the raw columns of all requests are
  concatenated (strings with ``bytes_to_arrow``: one copy, no objects) and the kernel runs once, without the
  GIL, into a per-thread preallocated tensor that goes straight to onnxruntime; sampled requests are handed
  to the feature log (``server.feature_log``) without ever waiting for it.

Missing values: a NaN in an FP64 input is missing and gets the spec's policy (impute, missing indicator,
index 0); any raw input's element is missing where its optional companion ``NAME__missing`` (BOOL) is true
(``missing.py``; REST JSON ``null`` arrives as such a companion). An empty string is a value, as offline.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from skewless.native import columns as _columns
from skewless.native.batch_merge import merge_column
from skewless.native.bytes_codec import BytesFormatError, bytes_to_arrow, check_bytes, decode_bytes
from skewless.native.feature_kernel import FeatureInputError, strings_to_buffers
from skewless.native.spec import FeatureSpec, SpecError
from skewless.protos import model_config_pb2 as mc

from ..codec import format_shape
from ..errors import InvalidArgument, ModelLoadError
from ..models.config import OnnxTensor
from ..security.paths import contained
from . import missing
from .aggregate_states import UNIT_NS, IngestCounts
from .served_log import FeatureLogger, LogRecord, log_settings

log = logging.getLogger(__name__)

FEATURES_FILE = "features.json"
# Raw spec dtype -> the ONNX type string that config completion turns into the client-facing datatype.
RAW_ONNX_TYPES = {"float": "tensor(double)", "int": "tensor(int64)", "bool": "tensor(bool)",
                  "string": "tensor(string)"}
RAW_CONFIG_TYPES = {"float": "TYPE_FP64", "int": "TYPE_INT64", "bool": "TYPE_BOOL", "string": "TYPE_STRING"}
NUMPY_TYPES = {"float": np.dtype(np.float64), "int": np.dtype(np.int64), "bool": np.dtype(np.bool_)}
OUTPUT_ONNX_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)", "int64": "tensor(int64)",
                     "int32": "tensor(int32)"}


class WireBytes(np.ndarray):
    """A validated serialized BYTES tensor kept as its wire bytes (uint8), with its element count.

    An ndarray, so the batcher's compatibility key and everything else that handles feeds keep working.
    """

    count: int


class FeatureFeeds(dict):
    """One request's raw columns (name -> array) plus what the feature log records about it."""

    __slots__ = ("request_id", "time_ns", "n_rows")

    def __init__(self, feeds: dict[str, np.ndarray], request_id: str, time_ns: int, n_rows: int) -> None:
        super().__init__(feeds)
        self.request_id = request_id
        self.time_ns = time_ns
        self.n_rows = n_rows


class MaskedFeeds(FeatureFeeds):
    """A request that sent ``NAME__missing`` companions: ``masks`` maps raw name -> bool mask (True = missing)."""

    __slots__ = ("masks",)


def _dynamic(dim: object) -> bool:
    return not isinstance(dim, int) or dim < 0


def check_model_inputs(spec: FeatureSpec, onnx_inputs: Sequence[OnnxTensor], where: str) -> None:
    """The spec's outputs must be exactly the ONNX model's inputs: same names, dtypes and widths."""
    model = {t.name: t for t in onnx_inputs}
    outputs = {t.name: t for t in spec.outputs}
    unfed = [n for n in model if n not in outputs]
    if unfed:
        raise ModelLoadError(f"{where}: the ONNX model's input(s) {unfed} are not outputs of {FEATURES_FILE} "
                             f"(its outputs are {list(outputs)})")
    unused = [n for n in outputs if n not in model]
    if unused:
        raise ModelLoadError(f"{where}: {FEATURES_FILE} output(s) {unused} are not inputs of the ONNX model "
                             f"(its inputs are {list(model)})")
    for name, out in outputs.items():
        t = model[name]
        want = OUTPUT_ONNX_TYPES[out.dtype]
        if t.onnx_type != want:
            raise ModelLoadError(f"{where}: {FEATURES_FILE} output '{name}' is {out.dtype} ({want}) but the ONNX "
                                 f"model's input '{name}' is {t.onnx_type}")
        shape = ["?" if _dynamic(d) else int(d) for d in t.shape]
        if len(t.shape) != 2 or not _dynamic(t.shape[0]):
            raise ModelLoadError(f"{where}: the ONNX model's input '{name}' has shape {shape}; a feature tensor "
                                 f"is [batch, {out.width}] with a dynamic batch dimension")
        if not _dynamic(t.shape[1]) and int(t.shape[1]) != out.width:
            raise ModelLoadError(f"{where}: {FEATURES_FILE} output '{name}' has width {out.width} but the ONNX "
                                 f"model's input '{name}' has shape {shape}")


class FeatureStage:
    """The loaded spec of one model version and everything the serving path does with it. Thread-safe."""

    def __init__(self, spec: FeatureSpec, model_name: str, version: int, logger: FeatureLogger | None) -> None:
        self.spec = spec
        self.model_name = model_name
        self.version = version
        self.where = f"model '{model_name}' version {version}"
        self.logger = logger
        self.raw_dtypes: list[tuple[str, str]] = [(t.name, t.dtype) for t in spec.inputs]
        self.raw_tensors = [OnnxTensor(t.name, RAW_ONNX_TYPES[t.dtype], (None, 1)) for t in spec.inputs]
        self._first_raw = spec.input_names[0] if spec.inputs else ""
        self.companions: dict[str, str] = {}  # NAME__missing -> NAME, set by check_config
        self.raw_names = frozenset(spec.input_names)  # the required inputs (companions are optional)
        self._min_rows = 1
        self._local = threading.local()
        # Windowed aggregates (issue 29): the state every batch reads and then records into. The version's own
        # until the server's AggregateStates hands it the one its model's versions share (use_aggregates).
        self.has_aggregates = bool(spec.aggregate_names)
        self._groups = _aggregate_groups(spec) if self.has_aggregates else []
        self.aggregates = self.new_aggregate_state() if self.has_aggregates else None
        self.aggregate_names: tuple[str, ...] = tuple(self.aggregates.names) if self.aggregates is not None else ()
        self._aggregate_entry = None  # the shared state's ModelAggregates, released at close
        self._release = None
        # Event times more than this far ahead of the clock are refused (0: no bound; set by the server's
        # AggregateStates from --aggregate-max-future): one far-future event moves its group's newest bucket,
        # which hides every window of the group (R rule) until real time catches up.
        self.max_future_ns = 0
        self._times = sorted({(t, unit) for _, t, unit in self._groups})

    # -- load time ---------------------------------------------------------------------------------------
    @classmethod
    def load(cls, version_dir: Path, base_config: mc.ModelConfig, onnx_inputs: Sequence[OnnxTensor],
             model_name: str, version: int) -> FeatureStage | None:
        """The stage of a version folder that holds ``features.json``, else None. Raises ModelLoadError."""
        path = Path(version_dir) / FEATURES_FILE
        if not path.is_file():
            return None
        contained(path, version_dir, FEATURES_FILE)
        where = f"model '{model_name}' version {version}"
        try:
            spec = FeatureSpec.load(path)
        except (SpecError, OSError, ValueError, TypeError, KeyError) as exc:  # ValueError covers bad UTF-8
            raise ModelLoadError(f"{where}: cannot use {path}: {exc}") from None
        if not spec.inputs:
            raise ModelLoadError(f"{where}: {path} declares no raw inputs")
        check_model_inputs(spec, onnx_inputs, where)
        missing.check_raw_names(spec.input_names, where)
        missing.drop_listed(base_config, spec.input_names, where)
        _check_config_inputs(spec, base_config, where)
        settings = log_settings(base_config, where)
        logger = None
        if settings is not None:
            logger = FeatureLogger(settings, spec, model_name, version)
        stage = cls(spec, model_name, version, logger)
        log.info("%s: serving raw inputs %s through %s (spec %s)%s", where, list(spec.input_names),
                 FEATURES_FILE, spec.sha256[:12],
                 f"; logging {settings.rate:g} of requests to {logger.directory}" if logger else "")
        return stage

    def new_aggregate_state(self, max_keys: int = 0):
        """A new, empty state for this spec's aggregates (``skewless.native.aggregates.AggregateState``)."""
        return self.spec.new_aggregate_state(max_keys=max_keys)

    def use_aggregates(self, entry, release) -> None:
        """Read and record into ``entry.state`` (shared by the model's versions with this plan) from now on;
        ``release(entry)`` is called when this version closes."""
        self._aggregate_entry, self._release = entry, release
        self.aggregates = entry.state

    def check_config(self, config: mc.ModelConfig) -> None:
        """After completion: every raw input carries one value per row, so kernel columns are 1-D."""
        batching = config.max_batch_size > 0
        for f in config.input:
            dims = list(f.dims)
            if (batching and dims != [1]) or (not batching and (len(dims) != 2 or dims[1] != 1)):
                want = "[1]" if batching else "[-1, 1]"
                raise ModelLoadError(f"{self.where}: raw input '{f.name}' has dims {format_shape(dims)} in the "
                                     f"config; a feature spec takes one value per row: dims {want}")
        self._min_rows = max(1, config.max_batch_size)
        self.companions = missing.add_companions(config, [name for name, _ in self.raw_dtypes])

    # -- request time (event loop) -----------------------------------------------------------------------
    def bytes_payload(self, name: str, shape: Sequence[int], raw: bytes | memoryview) -> WireBytes:
        """Validate a BYTES raw input and keep its wire bytes: no Python object per value (zero-copy)."""
        count = math.prod(shape)
        try:
            check_bytes(raw, count)
        except BytesFormatError as exc:
            raise InvalidArgument(
                f"malformed BYTES data for input '{name}' with shape {format_shape(shape)}: {exc}") from None
        arr = np.frombuffer(raw, dtype=np.uint8).view(WireBytes)
        arr.count = count
        return arr

    def admit(self, feeds: dict[str, np.ndarray], request_id: str) -> FeatureFeeds:
        """Check that every raw column has the same number of rows; tag the request for the feature log."""
        n_rows = -1
        for name, _ in self.raw_dtypes:
            arr = feeds[name]
            n = arr.count if type(arr) is WireBytes else arr.shape[0]
            if n_rows < 0:
                n_rows = n
            elif n != n_rows:
                raise InvalidArgument(f"input '{name}' has {n} rows but input '{self._first_raw}' has {n_rows}: "
                                      f"every raw input of model '{self.model_name}' needs one value per row")
        if len(feeds) == len(self.raw_dtypes):  # no companion sent: nothing more to do
            if self.max_future_ns:
                self.check_event_times(feeds, {})
            return FeatureFeeds(feeds, request_id, time.time_ns(), max(n_rows, 0))
        masked = MaskedFeeds(feeds, request_id, time.time_ns(), max(n_rows, 0))
        masked.masks = missing.check_companions(feeds, self.companions, _rows_of)
        if self.max_future_ns:
            self.check_event_times(feeds, masked.masks)
        return masked

    def check_event_times(self, feeds: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> None:
        """Refuse this request alone (before it can join a batch) when an event time is too far ahead."""
        now_ns = time.time_ns()
        for name, unit in self._times:
            arr = feeds.get(name)
            if arr is None or arr.size == 0:
                continue
            values = arr.reshape(-1)
            mask = masks.get(name)
            if mask is not None:
                values = values[~mask.reshape(-1)]
                if values.size == 0:
                    continue
            unit_ns = UNIT_NS[unit]
            limit = (now_ns + self.max_future_ns) // unit_ns
            newest = int(values.max())
            if newest > limit:
                ahead_s = (newest - now_ns // unit_ns) * unit_ns / 1e9
                raise InvalidArgument(
                    f"input '{name}' holds the event time {newest} ({unit} since the Unix epoch), {ahead_s:.0f} s "
                    f"ahead of the server's clock: model '{self.model_name}' refuses event times more than "
                    f"{self.max_future_ns / 1e9:g} s ahead (--aggregate-max-future), since one would hide every "
                    "window of its aggregates until then; check the client's clock and the time unit")

    # -- batch time (ModelVersion.run_batch, off the event loop unless the model is cheap enough) --------
    def transform_batch(self, feeds: Sequence[dict[str, np.ndarray]], *, log_sample: bool = True,
                        record: bool = True, own_state: bool = False) -> dict[str, np.ndarray]:
        """Merge the raw columns of a batch, run the kernel once into this thread's buffers, maybe log.

        With aggregates, the engine reads each row's windows and then records the row, in the batch's row
        order, atomically against other batches and ingests. ``record=False`` (a shadow's mirrored copy of
        requests the primary records) reads the live state without recording: the shadow sees the windows the
        primary saw and no row is counted twice. ``own_state`` (warmup samples, a validation set) runs the rows
        through a new empty state instead, as ``skewless transform`` (and so ``skewless export``'s expected
        outputs) does, leaving the live state alone. Returns the model's feeds: views of the first n rows of
        per-thread tensors, valid until this thread transforms its next batch (for the onnxruntime run that
        follows).
        """
        counts = [f.n_rows if type(f) is FeatureFeeds else _rows_of(f[self._first_raw]) for f in feeds]
        n = sum(counts)
        columns = {name: self._merge(name, dtype, feeds, counts) for name, dtype in self.raw_dtypes}
        if MaskedFeeds in map(type, feeds):  # some request sent NAME__missing: fold the masks in
            masks = [f.masks if type(f) is MaskedFeeds else None for f in feeds]
            columns = {name: missing.with_missing(col, missing.batch_missing(name, masks, counts))
                       for name, col in columns.items()}
        outs = self._buffers(n)
        derived = None
        try:
            if self.has_aggregates:
                derived = self._derived_buffers(n)
                if own_state:
                    state = self.new_aggregate_state()
                else:
                    state = self.aggregates if record else _ReadOnly(self.aggregates)
                self.spec.transform_into(columns, outs, aggregate_state=state, aggregates_out=derived)
            else:
                self.spec.transform_into(columns, outs)
        except FeatureInputError as exc:
            # admit() and the decoder catch every per-request problem; reaching here means a whole batch
            # is bad, which is still the client's input, not a server fault.
            raise InvalidArgument(f"{exc} (model '{self.model_name}')") from None
        if log_sample and self.logger is not None:
            self._log(feeds, counts, columns, outs, derived)
        return outs

    def _merge(self, name: str, dtype: str, feeds: Sequence[dict[str, np.ndarray]], counts: list[int]):
        """One raw column of the whole batch, as the kernel takes it: 1-D array or (offsets, data[, valid])."""
        if dtype != "string":
            try:
                return merge_column(feeds if isinstance(feeds, list) else list(feeds), name, NUMPY_TYPES[dtype])
            except TypeError as exc:  # decode_inputs checked the datatype: only a caller bug gets here
                raise InvalidArgument(str(exc)) from None
        parts = [f[name] for f in feeds]
        if all(type(p) is WireBytes for p in parts):
            try:
                return bytes_to_arrow(parts, counts)
            except BytesFormatError as exc:  # validated at decode time already; kept for safety
                raise InvalidArgument(f"malformed BYTES data for input '{name}': {exc}") from None
        # typed contents and warmup samples arrive as object arrays of str: encode them once
        objs = [decode_bytes(p, p.count, False) if type(p) is WireBytes else p.reshape(-1) for p in parts]
        offsets, data, valid = strings_to_buffers(np.concatenate(objs) if len(objs) != 1 else objs[0])
        return (offsets, data) if valid is None else (offsets, data, valid)

    def _buffers(self, n: int) -> dict[str, np.ndarray]:
        """Views of ``n`` rows of this thread's output tensors, grown when a batch is larger than any yet."""
        bufs: dict[str, np.ndarray] | None = getattr(self._local, "bufs", None)
        if bufs is None or next(iter(bufs.values())).shape[0] < n:
            rows = max(n, self._min_rows)
            bufs = {t.name: np.empty((rows, t.width), dtype=t.dtype) for t in self.spec.outputs}
            self._local.bufs = bufs
        return {name: buf[:n] for name, buf in bufs.items()}

    def _derived_buffers(self, n: int) -> dict[str, np.ndarray]:
        """Views of ``n`` rows of this thread's aggregate columns (float64, one per aggregate), which the engine
        fills and the feature log copies: the values the kernel read, logged beside the raw inputs."""
        bufs: dict[str, np.ndarray] | None = getattr(self._local, "derived", None)
        if bufs is None or next(iter(bufs.values())).shape[0] < n:
            rows = max(n, self._min_rows)
            bufs = {name: np.empty(rows, dtype=np.float64) for name in self.aggregate_names}
            self._local.derived = bufs
        return {name: buf[:n] for name, buf in bufs.items()}

    def _log(self, feeds: Sequence[dict[str, np.ndarray]], counts: list[int], columns: dict,
             outs: dict[str, np.ndarray], derived: dict[str, np.ndarray] | None = None) -> None:
        logger = self.logger
        chosen = logger.sample(len(feeds))
        if not chosen or not logger.has_room():
            if chosen:
                logger.drop(sum(counts[i] for i in chosen))
            return
        if len(chosen) == len(feeds):
            rows = None
            tensors = {name: arr.copy() for name, arr in outs.items()}  # the buffers are reused
            values = {name: arr.copy() for name, arr in derived.items()} if derived else None
        else:
            starts = np.cumsum([0, *counts])
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in chosen])
            tensors = {name: arr[rows] for name, arr in outs.items()}
            values = {name: arr[rows] for name, arr in derived.items()} if derived else None
        requests = [(getattr(feeds[i], "request_id", ""), getattr(feeds[i], "time_ns", 0), counts[i])
                    for i in chosen]
        logger.submit(LogRecord(columns, rows, tensors, requests, values))

    # -- ingest (events that are never scored; off the event loop) -----------------------------------------
    def ingest(self, feeds: dict[str, np.ndarray]) -> IngestCounts:
        """Record decoded events (any subset of the raw inputs) in the aggregate state without reading it.

        Each aggregate group whose key and time inputs are all present records the rows whose keys and time
        are valid; absent value inputs make events without a value. One engine call, atomic against batches.
        """
        state = self.aggregates
        if state is None:
            raise InvalidArgument(f"model '{self.model_name}' has no windowed aggregates: it takes no events")
        for comp, raw in self.companions.items():
            if comp in feeds and raw not in feeds:
                raise InvalidArgument(f"input '{comp}' marks the missing elements of '{raw}', which the request "
                                      "does not send")
        dtypes = dict(self.raw_dtypes)
        present = [name for name in state.inputs if name in feeds]
        groups = [g for g in self._groups if all(c in feeds for c in (*g[0], g[1]))]
        if not groups:
            wanted = sorted({" + ".join((*keys, t)) for keys, t, _ in self._groups})
            raise InvalidArgument(f"the events for model '{self.model_name}' lack the key and time inputs of every "
                                  f"aggregate: send at least one of {wanted} (got {sorted(feeds)})")
        first = next(iter(feeds))
        n = _rows_of(feeds[first])
        for name, arr in feeds.items():
            if name in dtypes and _rows_of(arr) != n:
                raise InvalidArgument(f"input '{name}' has {_rows_of(arr)} rows but input '{first}' has {n}: every "
                                      f"input of the events needs one value per row")
        masks = missing.check_companions(feeds, {c: r for c, r in self.companions.items() if c in feeds}, _rows_of)
        if self.max_future_ns:
            self.check_event_times(feeds, masks)
        columns = {}
        for name in present:
            merged = self._merge(name, dtypes[name], [feeds], [n])
            mask = masks.get(name)
            columns[name] = _columns.column(name, missing.with_missing(merged, mask) if mask is not None else merged,
                                            dtypes[name])
        eligible = np.zeros(n, dtype=np.bool_)
        newest_ns = None
        for keys, time_name, unit in groups:
            ok = np.ones(n, dtype=np.bool_)
            for c in (*keys, time_name):
                ok &= _valid(columns[c], n)
            eligible |= ok
            if ok.any():
                t = int(columns[time_name][1][ok].max()) * UNIT_NS.get(unit, 1)
                newest_ns = t if newest_ns is None else max(newest_ns, t)
        try:
            recorded = int(state.ingest(columns, n))
        except FeatureInputError as exc:
            raise InvalidArgument(f"{exc} (model '{self.model_name}')") from None
        valid = int(eligible.sum())
        counts = IngestCounts(recorded, max(0, valid - recorded), n - valid)
        entry = self._aggregate_entry
        if entry is not None:
            entry.note_ingest(counts, newest_ns)
        return counts

    # -- warmup and shutdown -----------------------------------------------------------------------------
    def model_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw warmup samples -> the model's feeds (copied: warmup runs outside the request path)."""
        return {k: v.copy() for k, v in self.transform_batch([feeds], log_sample=False, own_state=True).items()}

    def close(self) -> None:
        """Flush and close the feature log, release the shared aggregate state (the last version holding it
        saves it). Blocking: call it off the event loop, after the version's last batch."""
        if self.logger is not None:
            self.logger.close()
        entry, release = self._aggregate_entry, self._release
        if entry is not None and release is not None:
            self._aggregate_entry = None
            release(entry)


class _ReadOnly:
    """An aggregate state (in process or Redis) seen through ``score(record=False)``: reads, never records."""

    __slots__ = ("state",)

    def __init__(self, state) -> None:
        self.state = state

    @property
    def plan_hash(self) -> str:
        return self.state.plan_hash

    def score(self, columns, n_rows: int, out=None) -> dict[str, np.ndarray]:
        return self.state.score(columns, n_rows, out=out, record=False)


def _aggregate_groups(spec: FeatureSpec) -> list[tuple[tuple[str, ...], str, str]]:
    """(key inputs, time input, time unit) of each aggregate group of the spec (buckets aside: recording
    needs the keys and the time)."""
    seen: dict[tuple, str] = {}
    for a in spec.aggregates:
        seen.setdefault((tuple(a["keys"]), a["time"]), a["time_unit"])
    return [(keys, t, unit) for (keys, t), unit in seen.items()]


def _valid(col: tuple, n: int) -> np.ndarray:
    """Rows of a kernel column (``native/columns.py``'s tuple) that hold a value: its byte mask, Arrow bitmap
    and (floats) not NaN."""
    kind, values, _, valid_bytes, valid_bits, bit_offset = col
    ok = np.ones(n, dtype=np.bool_) if valid_bytes is None else np.asarray(valid_bytes, dtype=np.bool_).copy()
    if valid_bits is not None:
        bits = np.unpackbits(np.frombuffer(valid_bits, dtype=np.uint8), bitorder="little")
        ok &= bits[bit_offset:bit_offset + n].astype(np.bool_)
    if kind == "f64":
        ok &= ~np.isnan(values)
    return ok


def _rows_of(arr: np.ndarray) -> int:
    return arr.count if type(arr) is WireBytes else arr.shape[0]


def _check_config_inputs(spec: FeatureSpec, cfg: mc.ModelConfig, where: str) -> None:
    """An explicit config lists the raw inputs (clear errors for listing the model's feature tensors)."""
    raw = {t.name: t.dtype for t in spec.inputs}
    for f in cfg.input:
        if f.name not in raw:
            what = (f"is computed from the raw inputs by {FEATURES_FILE}" if f.name in spec.output_names
                    else f"is not a raw input of {FEATURES_FILE}")
            raise ModelLoadError(f"{where}: config input '{f.name}' {what}; list the raw inputs {list(raw)} "
                                 "(or leave the inputs out to have them completed)")
        want = RAW_CONFIG_TYPES[raw[f.name]]
        if mc.DataType.Name(f.data_type) != want:
            raise ModelLoadError(f"{where}: raw input '{f.name}' is {raw[f.name]} in {FEATURES_FILE}, served "
                                 f"as {want}; the config says {mc.DataType.Name(f.data_type)}")
        if f.HasField("reshape"):
            raise ModelLoadError(f"{where}: raw input '{f.name}' cannot have a reshape")

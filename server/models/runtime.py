"""onnxruntime sessions: one per instance, run in the model's own worker threads.

Each model has its own executor with one thread per instance, so a slow model only ever queues its own
requests; ``InferenceSession.run`` releases the GIL, so instances of different models run in parallel. The
executor is a Handoff (batching/handoff.py): the batch runner hands batches to it without run_in_executor's
round trip.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skewless.protos import model_config_pb2 as mc

from ..batching.handoff import Handoff
from ..errors import Internal, ModelLoadError
from ..parameters import read
from .config import OnnxTensor
from .iobinding import BoundRunner, HostStaging, PinnedAllocator, cuda_device_count

log = logging.getLogger(__name__)

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - exercised only on a broken install
    ort = None

BF16 = "tensor(bfloat16)"
STRING = "tensor(string)"
_ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Config parameters of the bound (IOBinding) path, see iobinding.py.
IO_BINDING = "skewless.io_binding"  # auto (default: on for KIND_GPU instances), 1, 0
# Intra-op threads of a session whose config names none (None: onnxruntime's own choice, one per core).
# ``--workers N`` sets it to cores/N so that N processes' pools do not each claim every core.
DEFAULT_INTRA_OP_THREADS: int | None = None
PINNED_STAGING = "skewless.cuda_pinned_staging"  # 0 (default) or 1: page-locked input staging on GPU instances

_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def require_onnxruntime():
    if ort is None:
        raise ModelLoadError(
            "onnxruntime is not installed: install skewless with the 'cpu' extra (onnxruntime) or the "
            "'gpu' extra (onnxruntime-gpu), e.g. pip install 'skewless[cpu]'"
        )
    return ort


def cuda_available() -> bool:
    return ort is not None and CUDA in ort.get_available_providers()


_cuda_preloaded = False


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu finds CUDA/cuDNN installed as pip wheels (the gpu extra) only once told to load them."""
    global _cuda_preloaded
    if _cuda_preloaded or not hasattr(ort, "preload_dlls"):
        return
    _cuda_preloaded = True
    try:
        ort.preload_dlls()
    except Exception as exc:  # system-wide CUDA libraries may still work
        log.debug("onnxruntime.preload_dlls() failed: %s", exc)


def cuda_usable() -> bool:
    """KIND_AUTO's question: would a CUDA session actually run here? The GPU wheel lists CUDA among its
    providers on any machine (it reports what was built in), so a GPU image on a CPU-only node also asks the
    CUDA runtime for a device; without one, auto-completed configs (KIND_AUTO) load on the CPU as Triton's do."""
    if not cuda_available():
        return False
    _preload_cuda_libraries()
    return cuda_device_count() > 0


@dataclass(frozen=True)
class Placement:
    kind: str  # "KIND_CPU" or "KIND_GPU"
    device_id: int


def placements(cfg: mc.ModelConfig) -> list[Placement]:
    """Triton semantics: KIND_GPU makes ``count`` instances on each listed GPU (all GPUs when none listed)."""
    out: list[Placement] = []
    for group in cfg.instance_group:
        kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
        if kind == "KIND_AUTO":
            kind = "KIND_GPU" if cuda_usable() else "KIND_CPU"
        if kind == "KIND_CPU":
            out.extend(Placement("KIND_CPU", 0) for _ in range(group.count))
        elif kind == "KIND_GPU":
            if not cuda_available():
                raise ModelLoadError(
                    f"instance group '{group.name}' asks for KIND_GPU but onnxruntime has no CUDA execution "
                    "provider: install the 'gpu' extra (onnxruntime-gpu) or use KIND_CPU"
                )
            for gpu in list(group.gpus) or [0]:
                out.extend(Placement("KIND_GPU", int(gpu)) for _ in range(group.count))
        else:
            raise ModelLoadError(f"instance group '{group.name}' has unsupported kind {kind}")
    return out


def session_options(cfg: mc.ModelConfig, intra_op_threads: int | None = None):
    """``intra_op_threads`` overrides the config's (the background instance runs on its caller's thread)."""
    rt = require_onnxruntime()
    so = rt.SessionOptions()
    intra = read(cfg, "intra_op_thread_count")
    inter = read(cfg, "inter_op_thread_count")
    if intra is None:
        intra = DEFAULT_INTRA_OP_THREADS
    if intra_op_threads is not None:
        intra = intra_op_threads
    if intra is not None:
        so.intra_op_num_threads = intra
    for key, value in spinning_entries(spinning_mode(cfg, intra), read(cfg, "skewless.intra_op_spin_us")).items():
        so.add_session_config_entry(key, value)
    if inter is not None:
        so.inter_op_num_threads = inter
        so.execution_mode = rt.ExecutionMode.ORT_PARALLEL
    level = read(cfg, "graph_optimization_level")
    if level is not None:
        so.graph_optimization_level = getattr(rt.GraphOptimizationLevel, _OPT_LEVELS[level])
    elif cfg.optimization.HasField("graph"):
        # Triton's onnxruntime backend: level -1 = basic, 1 = extended, anything else = all.
        g = cfg.optimization.graph.level
        name = "basic" if g == -1 else "extended" if g == 1 else "all"
        so.graph_optimization_level = getattr(rt.GraphOptimizationLevel, _OPT_LEVELS[name])
    return so


def bounded_spin_supported() -> bool:
    """onnxruntime 1.26 added ``session.intra_op.spin_duration_us``; an older one ignores the key and spins
    its own default after each run (about 40 ms of a core, measured on 1.32 without the key)."""
    if ort is None:
        return False
    try:
        major, minor = (int(part) for part in ort.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (1, 26)


def spinning_mode(cfg: mc.ModelConfig, intra_op_threads: int | None) -> str:
    """How the session's pool threads wait for work: 'bounded' (spin between a run's operators and for
    ``skewless.intra_op_spin_us`` after it, then sleep), 'always' (onnxruntime's own spin after each run),
    'during_run' (sleep as soon as the run returns) or 'never' (sleep, woken per operator).

    Triton's ``intra_op_allow_spinning`` decides when set (1: always, 0: never). Otherwise
    ``skewless.intra_op_spinning``, whose 'auto' is 'bounded' when the session has a pool (more than one
    intra-op thread) and onnxruntime can bound the spin, else 'during_run': a pool that has gone to sleep
    costs a wake-up at the start of every run (~0.1 ms of a 1.2 ms run of the heavy MLP, measured), and
    the bound keeps an idle model from burning a core for longer than the spin after its last run."""
    allow = read(cfg, "intra_op_allow_spinning")
    if allow is not None:
        return "always" if allow else "never"
    mode = read(cfg, "skewless.intra_op_spinning")
    if mode == "bounded" and not bounded_spin_supported():
        raise ModelLoadError(f"skewless.intra_op_spinning 'bounded' needs onnxruntime 1.26 or newer "
                             f"(this is {getattr(ort, '__version__', 'none')}): use 'during_run'")
    if mode != "auto":
        return mode
    threads = intra_op_threads if intra_op_threads is not None else (os.cpu_count() or 1)
    if threads <= 1:
        return "never"
    return "bounded" if bounded_spin_supported() else "during_run"


def spinning_entries(mode: str, spin_us: int = 0) -> dict[str, str]:
    """onnxruntime session config entries for a spinning mode (see spinning_mode). onnxruntime's own spin
    after each run lasts ~40 ms and burns the cores the transport needs (measured on the example MLP: ~30%
    more server CPU per request); 'bounded' cuts it to ``spin_us``, and ``session.force_spinning_stop`` ends
    it as each run returns."""
    spin = "0" if mode == "never" else "1"
    entries = {"session.intra_op.allow_spinning": spin, "session.inter_op.allow_spinning": spin,
               "session.force_spinning_stop": "1" if mode == "during_run" else "0"}
    if mode == "bounded":
        entries["session.intra_op.spin_duration_us"] = entries["session.inter_op.spin_duration_us"] = str(spin_us)
    return entries


def cuda_provider_options(cfg: mc.ModelConfig, device_id: int) -> dict[str, str]:
    """TF32 is off unless the config asks (parameter ``cuda_use_tf32: "1"``): onnxruntime turns it on by
    default on Ampere and newer, which silently changes FP32 results in the fourth digit."""
    options = {"device_id": str(device_id), "use_tf32": read(cfg, "cuda_use_tf32")}
    for key in ("cudnn_conv_algo_search", "gpu_mem_limit", "arena_extend_strategy", "do_copy_in_default_stream"):
        value = read(cfg, f"cuda_{key}")
        if value is not None:
            options[key] = value
    return options


class OnnxInstance:
    """One InferenceSession on one device."""

    abandoned = False  # set by the watchdog: a hung run's instance never goes back to the pool

    def __init__(self, model_path: Path, cfg: mc.ModelConfig, placement: Placement,
                 intra_op_threads: int | None = None):
        self.placement = placement
        rt = require_onnxruntime()
        providers: list = [CPU]
        if placement.kind == "KIND_GPU":
            _preload_cuda_libraries()
            providers = [(CUDA, cuda_provider_options(cfg, placement.device_id)), CPU]
        try:
            self.session = rt.InferenceSession(str(model_path), sess_options=session_options(cfg, intra_op_threads),
                                               providers=providers)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime failed to load {model_path}: {exc}") from None
        active = self.session.get_providers()
        # The GPU wheel falls back to CPU silently when no device works; say so instead of pretending.
        if placement.kind == "KIND_GPU" and (not active or active[0] != CUDA):
            raise ModelLoadError(
                f"CUDA execution provider could not start on GPU {placement.device_id} for {model_path} "
                f"(active providers: {active})"
            )
        self.placement = placement
        self.providers = active
        # The data plane has already checked names, types and shapes against this model, so skip
        # InferenceSession.run's own per-call checks (several us per call on a ~5 us model) and call the
        # binding directly; and never let an execution-provider failure silently retry on another provider.
        self.session.disable_fallback()
        self._run = getattr(self.session, "_sess", self.session).run
        ins, outs = self.io()
        self.bf16_inputs = {t.name for t in ins if t.onnx_type == BF16}
        self.bf16_outputs = {t.name for t in outs if t.onnx_type == BF16}
        if (self.bf16_inputs or self.bf16_outputs) and any(t.onnx_type == STRING for t in (*ins, *outs)):
            raise ModelLoadError(
                f"{model_path} mixes bfloat16 and string tensors, which onnxruntime's Python API cannot run "
                "together (bfloat16 needs OrtValues, which cannot hold strings)")
        self.bound = self._bound_runner(cfg, placement, [*ins, *outs], model_path)

    def _bound_runner(self, cfg: mc.ModelConfig, placement: Placement, tensors: list[OnnxTensor],
                      model_path: Path) -> BoundRunner | None:
        """The IOBinding path where the config (or, by default, a GPU placement) asks for it and the model's
        tensors allow it: strings live on the host only, and numpy cannot hold bfloat16."""
        mode = read(cfg, IO_BINDING)
        pinned = read(cfg, PINNED_STAGING)
        gpu = placement.kind == "KIND_GPU"
        if not (gpu if mode == "auto" else mode == "1"):
            return None
        if any(t.onnx_type in (STRING, BF16) for t in tensors):
            log.info("%s: string or bfloat16 tensors, so it runs without IO binding", model_path)
            return None
        staging = None
        if pinned:
            if gpu:
                staging = HostStaging(PinnedAllocator())
            else:
                log.info("%s: %s applies to KIND_GPU instances only; ignored on CPU", model_path, PINNED_STAGING)
        return BoundRunner(self.session, "cuda" if gpu else "cpu", placement.device_id if gpu else 0, staging)

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.bound is not None:
            return self.bound.run(output_names, feeds)
        if self.bf16_inputs or self.bf16_outputs:
            return self._run_ort_values(output_names, feeds)
        return self._run(output_names, feeds, None)

    def _run_ort_values(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """numpy has no bfloat16, so session.run cannot take or return it: go through OrtValues and
        carry bfloat16 bit patterns as uint16."""
        OrtValue = ort.OrtValue
        values = {
            name: OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(arr), _ONNX_BFLOAT16)
            if name in self.bf16_inputs else OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr))
            for name, arr in feeds.items()
        }
        results = self.session.run_with_ort_values(output_names, values)
        out = []
        for name, value in zip(output_names, results, strict=True):
            if name in self.bf16_outputs:
                shape = tuple(value.shape())
                n = int(np.prod(shape))
                buf = (ctypes.c_uint16 * n).from_address(value.data_ptr()) if n else None
                out.append(np.array(buf, dtype=np.uint16).reshape(shape) if n else np.empty(shape, np.uint16))
            else:
                out.append(value.numpy())
        return out

    def close(self) -> None:
        if self.bound is not None:
            self.bound.close()

    def io(self) -> tuple[list[OnnxTensor], list[OnnxTensor]]:
        def conv(args) -> list[OnnxTensor]:
            return [OnnxTensor(a.name, a.type, tuple(a.shape)) for a in args]

        return conv(self.session.get_inputs()), conv(self.session.get_outputs())


def probe_model_io(model_path: Path) -> tuple[list[OnnxTensor], list[OnnxTensor]]:
    """Inputs and outputs of an ONNX file, read with a throwaway CPU session (no config needed)."""
    rt = require_onnxruntime()
    so = rt.SessionOptions()
    so.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = rt.InferenceSession(str(model_path), sess_options=so, providers=[CPU])
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime failed to load {model_path}: {exc}") from None
    conv = lambda args: [OnnxTensor(a.name, a.type, tuple(a.shape)) for a in args]  # noqa: E731
    return conv(sess.get_inputs()), conv(sess.get_outputs())


_BACKGROUND: ThreadPoolExecutor | None = None
_BACKGROUND_LOCK = threading.Lock()


def _background_thread() -> ThreadPoolExecutor:
    global _BACKGROUND
    with _BACKGROUND_LOCK:
        if _BACKGROUND is None:
            _BACKGROUND = ThreadPoolExecutor(1, thread_name_prefix="ort-background", initializer=lowest_priority)
        return _BACKGROUND


def lowest_priority() -> None:
    """Give the calling thread the lowest OS priority (Linux threads carry their own nice value)."""
    # not Linux, or not allowed: background work is still bounded by its callers
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


# Worker threads the watchdog gave up on. They are daemon threads, so Python does not join them at exit; but a
# process holding one still inside onnxruntime leaves with os._exit (app.run does, once everything else has
# stopped) rather than run interpreter and library teardown under a running session.
HUNG_THREADS: set[int] = set()


def hung_threads_alive() -> bool:
    alive = {t.ident for t in threading.enumerate()}
    return bool(HUNG_THREADS & alive)


class ModelRuntime:
    """The instances of one model version and the threads that run them."""

    def __init__(self, model_path: Path, cfg: mc.ModelConfig, label: str):
        self.model_path, self.cfg, self.label = model_path, cfg, label
        self.instances = [OnnxInstance(model_path, cfg, p) for p in placements(cfg)]
        if not self.instances:
            raise ModelLoadError(f"model {label} has no instances (instance_group count is 0)")
        self._free: queue.SimpleQueue[OnnxInstance] = queue.SimpleQueue()
        for inst in self.instances:
            self._free.put(inst)
        # One thread per instance: a thread always finds a free instance, so get() never blocks for long.
        self.executor = Handoff(len(self.instances), f"ort-{label}")
        self._busy: dict[int, OnnxInstance] = {}  # worker thread id -> the instance it is running
        self.restarts = 0
        self._background: OnnxInstance | None = None
        self._background_lock = threading.Lock()

    @property
    def providers(self) -> list[str]:
        return self.instances[0].providers

    def run_sync(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        inst = self._free.get()
        me = threading.get_ident()
        self._busy[me] = inst
        try:
            return inst.run(output_names, feeds)
        except Exception as exc:
            raise Internal(f"onnxruntime execution failed: {exc}") from None
        finally:
            self._busy.pop(me, None)
            if not inst.abandoned:
                self._free.put(inst)

    def run_background(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run for background work (a shadow challenger): on CPU, a session of its own with one intra-op
        thread, so the whole run happens on one thread at the lowest OS priority instead of in the pool
        threads the primaries share; never takes an instance from the primaries' pool.
        The session is built on first use (one more copy of the weights). GPU placements run as usual.

        The run itself happens on the process's one background thread, niced to 19, while the caller waits
        without the GIL: the caller keeps its own priority for the parts that hold the GIL (a niced thread
        holding the GIL, preempted, would stall the event loop: priority inversion)."""
        inst = self._background
        if inst is None:
            if self.instances and self.instances[0].placement.kind != "KIND_CPU":
                return self.run_sync(output_names, feeds)
            with self._background_lock:
                if self._background is None:
                    self._background = OnnxInstance(self.model_path, self.cfg, Placement("KIND_CPU", 0),
                                                    intra_op_threads=1)
                inst = self._background
        try:
            return _background_thread().submit(inst.run, output_names, feeds).result()
        except Exception as exc:
            raise Internal(f"onnxruntime execution failed: {exc}") from None

    def restart_hung(self, thread_id: int) -> None:
        """The watchdog's restart: the instance the hung thread holds is abandoned (the thread cannot be
        stopped; its late result is discarded), a new session for the same device is built on a thread of
        its own and joins the pool, and a new executor replaces the one whose worker is stuck."""
        inst = self._busy.get(thread_id)
        if inst is None or inst.abandoned:
            return
        inst.abandoned = True
        self.restarts += 1
        HUNG_THREADS.add(thread_id)
        old, self.executor = self.executor, Handoff(len(self.instances), f"ort-{self.label}")
        old.shutdown(wait=False)  # its other threads exit once idle; the hung one when (if) its run returns

        def rebuild() -> None:
            try:
                fresh = OnnxInstance(self.model_path, self.cfg, inst.placement)
            except Exception:
                log.exception("model %s: restarting a hung instance failed; it runs one instance short", self.label)
                return
            self.instances = [fresh if i is inst else i for i in self.instances]
            self._free.put(fresh)
            log.warning("model %s: hung instance restarted (%d restart(s) so far)", self.label, self.restarts)

        threading.Thread(target=rebuild, name=f"restart-{self.label}", daemon=True).start()

    def run_on_each_instance(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> None:
        for inst in self.instances:
            inst.run(output_names, feeds)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        for inst in self.instances:
            inst.close()  # staging buffers: no batch can be using them once the executor has stopped
        self.instances.clear()
        with self._background_lock:
            if self._background is not None:
                self._background.close()
                self._background = None

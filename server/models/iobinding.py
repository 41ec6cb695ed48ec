"""Running an onnxruntime session through an IOBinding, with optional page-locked host staging.

With the CUDA execution provider, ``session.run`` allocates and copies inputs and outputs on every call, and
copies from pageable memory, which the driver stages through a bounce buffer of its own. Bound instead, each
input of a batch is copied to the device once (from a page-locked staging buffer when asked, which the DMA
engine reads directly), outputs are produced on the device and copied back once, and the binding object is
reused between batches. The same code runs with the CPU execution provider (device ``cpu``), which is how
it is tested on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable

import numpy as np

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

# Host buffers: (uint8 array over the memory, function that frees it).
Allocation = tuple[np.ndarray, Callable[[], None]]
Allocator = Callable[[int], Allocation]

_CUDA_HOST_ALLOC_PORTABLE = 1  # page-locked for every CUDA context, so any GPU's instance can use it
_CUDART_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")


def numpy_allocator(nbytes: int) -> Allocation:
    """Ordinary (pageable) host memory: what staging uses when no CUDA runtime is involved."""
    return np.empty(nbytes, dtype=np.uint8), lambda: None


def load_cudart() -> tuple[ctypes.CDLL | None, str]:
    """The CUDA runtime library, or None and why not. onnxruntime-gpu has already loaded it (from the system
    or the CUDA wheels) when a CUDA session exists, so this finds the same library rather than a second copy."""
    errors = []
    for name in _CUDART_NAMES:
        try:
            return ctypes.CDLL(name), ""
        except OSError as exc:
            errors.append(str(exc))
    return None, "; ".join(errors)


@functools.cache
def cuda_device_count() -> int:
    """GPUs the CUDA runtime can use here: 0 without the library, a driver or a device (asked once)."""
    lib, _ = load_cudart()
    if lib is None:
        return 0
    lib.cudaGetDeviceCount.argtypes = [ctypes.POINTER(ctypes.c_int)]
    lib.cudaGetDeviceCount.restype = ctypes.c_int
    count = ctypes.c_int(0)
    err = lib.cudaGetDeviceCount(ctypes.byref(count))
    if err != 0:
        log.debug("cudaGetDeviceCount failed with CUDA error %d: no usable GPU", err)
        return 0
    return count.value


class PinnedAllocator:
    """Page-locked host memory from the CUDA runtime (cudaHostAlloc / cudaFreeHost through ctypes)."""

    def __init__(self) -> None:
        self._lib, why = load_cudart()
        if self._lib is None:
            raise ModelLoadError(f"pinned staging buffers need the CUDA runtime library, which could not be "
                                 f"loaded ({why})")
        self._lib.cudaHostAlloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint]
        self._lib.cudaHostAlloc.restype = ctypes.c_int
        self._lib.cudaFreeHost.argtypes = [ctypes.c_void_p]
        self._lib.cudaFreeHost.restype = ctypes.c_int

    def __call__(self, nbytes: int) -> Allocation:
        ptr = ctypes.c_void_p()
        err = self._lib.cudaHostAlloc(ctypes.byref(ptr), max(nbytes, 1), _CUDA_HOST_ALLOC_PORTABLE)
        if err != 0 or not ptr.value:
            raise MemoryError(f"cudaHostAlloc of {nbytes} bytes failed with CUDA error {err}")
        buf = (ctypes.c_uint8 * nbytes).from_address(ptr.value)
        lib = self._lib
        return np.frombuffer(buf, dtype=np.uint8), lambda: lib.cudaFreeHost(ptr)


class HostStaging:
    """One reusable host buffer per input name, grown (doubling) when a batch needs more.

    Owned by one model instance, which one thread uses at a time, so no locking.
    """

    def __init__(self, allocator: Allocator = numpy_allocator):
        self._allocate = allocator
        self._buffers: dict[str, Allocation] = {}

    def stage(self, name: str, arr: np.ndarray) -> np.ndarray:
        """A copy of ``arr`` in the staging buffer for ``name``, with arr's dtype and shape."""
        nbytes = arr.nbytes
        held = self._buffers.get(name)
        if held is None or held[0].nbytes < nbytes:
            if held is not None:
                held[1]()
            capacity = max(nbytes, 2 * held[0].nbytes if held is not None else 0, 4096)
            held = self._allocate(capacity)
            self._buffers[name] = held
        view = held[0][:nbytes].view(arr.dtype).reshape(arr.shape)
        np.copyto(view, arr, casting="no")
        return view

    def capacity(self, name: str) -> int:
        held = self._buffers.get(name)
        return 0 if held is None else held[0].nbytes

    def close(self) -> None:
        for _, release in self._buffers.values():
            release()
        self._buffers.clear()


class BoundRunner:
    """Runs one session on one device through a reused IOBinding."""

    def __init__(self, session, device: str, device_id: int, staging: HostStaging | None = None):
        import onnxruntime as ort

        self._ort = ort
        self.session = session
        self.device = device
        self.device_id = device_id
        self.staging = staging
        self._binding = session.io_binding()

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, arr in feeds.items():
            arr = np.ascontiguousarray(arr)
            if self.staging is not None:
                arr = self.staging.stage(name, arr)
            # On the CPU device this wraps arr without a copy; on CUDA it is the one host-to-device copy.
            binding.bind_ortvalue_input(name, self._ort.OrtValue.ortvalue_from_numpy(arr, self.device,
                                                                                     self.device_id))
        for name in output_names:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        outputs = binding.copy_outputs_to_cpu()
        # Release the device tensors now rather than at the next batch: they are the arena's to reuse.
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        return outputs

    def close(self) -> None:
        if self.staging is not None:
            self.staging.close()

"""CUDA shared memory: a region is device memory another process exported with ``cudaIpcGetMemHandle``
(what ``tritonclient.utils.cuda_shared_memory`` makes), opened here with ``cudaIpcOpenMemHandle`` through
ctypes on the CUDA runtime (the one models/iobinding.py finds). Inputs are copied from the device slice to
host memory and outputs back with ``cudaMemcpy``. Without a usable GPU every call says so (UNAVAILABLE).

Unverified on a GPU at the time of writing (the development machine has none).
"""

from __future__ import annotations

import ctypes
import weakref
from typing import Any

import numpy as np

from ..errors import Unavailable
from ..models.iobinding import cuda_device_count, load_cudart
from .regions import CUDA, Region, register_error

_IPC_HANDLE_BYTES = 64  # sizeof(cudaIpcMemHandle_t)
_LAZY_PEER_ACCESS = 1  # cudaIpcMemLazyEnablePeerAccess
_HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2


class _Handle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * _IPC_HANDLE_BYTES)]


def available() -> bool:
    return cuda_device_count() > 0


def require() -> ctypes.CDLL:
    """The CUDA runtime, or UNAVAILABLE saying why CUDA shared memory cannot work here."""
    lib, why = load_cudart()
    if lib is None or cuda_device_count() == 0:
        raise Unavailable("CUDA shared memory is not available: this server has no usable GPU"
                          + (f" (no CUDA runtime: {why})" if lib is None else ""))
    return lib


class _Span:
    """A byte range of an opened device mapping; holding one keeps the mapping open."""

    __slots__ = ("mapping", "ptr", "nbytes")

    def __init__(self, mapping: _Mapping, ptr: int, nbytes: int):
        self.mapping, self.ptr, self.nbytes = mapping, ptr, nbytes

    def __getitem__(self, s: slice) -> _Span:
        start, stop, _ = s.indices(self.nbytes)
        return _Span(self.mapping, self.ptr + start, max(0, stop - start))


class _Mapping:
    """An opened IPC handle: closed with cudaIpcCloseMemHandle once unreferenced (no region, no request)."""

    def __init__(self, lib: ctypes.CDLL, ptr: int, device_id: int):
        self.lib, self.ptr, self.device_id = lib, ptr, device_id
        weakref.finalize(self, _close, lib, ptr, device_id)


def _close(lib: ctypes.CDLL, ptr: int, device_id: int) -> None:
    lib.cudaSetDevice(device_id)
    lib.cudaIpcCloseMemHandle(ctypes.c_void_p(ptr))


def _check(err: int, what: str) -> None:
    if err != 0:
        raise Unavailable(f"{what} failed with CUDA error {err}")


def open_region(name: str, raw_handle: bytes, device_id: int, byte_size: int) -> Region:
    lib = require()
    if len(raw_handle) != _IPC_HANDLE_BYTES or byte_size <= 0 or device_id < 0:
        raise register_error(name)
    lib.cudaIpcOpenMemHandle.argtypes = [ctypes.POINTER(ctypes.c_void_p), _Handle, ctypes.c_uint]
    lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if lib.cudaSetDevice(device_id) != 0:
        raise register_error(name)
    ptr = ctypes.c_void_p()
    if lib.cudaIpcOpenMemHandle(ctypes.byref(ptr), _Handle(raw_handle), _LAZY_PEER_ACCESS) != 0:
        raise register_error(name)
    mapping = _Mapping(lib, ptr.value, device_id)

    def read(span: _Span) -> np.ndarray:
        host = np.empty(span.nbytes, np.uint8)
        lib.cudaSetDevice(device_id)
        _check(lib.cudaMemcpy(host.ctypes.data, span.ptr, span.nbytes, _DEVICE_TO_HOST), "cudaMemcpy")
        return host

    def write(span: _Span, data: Any) -> None:
        host = np.frombuffer(data, np.uint8)
        lib.cudaSetDevice(device_id)
        _check(lib.cudaMemcpy(span.ptr, host.ctypes.data, host.nbytes, _HOST_TO_DEVICE), "cudaMemcpy")

    return Region(name, CUDA, byte_size, _Span(mapping, ptr.value, byte_size), device_id=device_id,
                  read=read, write=write)

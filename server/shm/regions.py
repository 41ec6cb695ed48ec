"""The registry of client-registered shared-memory regions, and the slices requests read and write.

A region is mapped once at registration. A request takes a ``memoryview`` slice of it: its inputs become
numpy views of that slice (no copy), its outputs are copied into it at completion. Each slice is a buffer
export of the mapping, which is what keeps freed memory out of reach: unregistering removes the name at
once, but the mapping is only unmapped once no slice of it is alive (``mmap.close`` refuses while exports
exist; the last export gone, CPython unmaps it), as Triton defers unregistering until in-flight requests
finish. Error wording and codes are Triton's (src/shared_memory_manager.cc).
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument, NotFound, SkewlessError

log = logging.getLogger(__name__)

SYSTEM = "system"
CUDA = "cuda"
# Triton reserves this key prefix for the regions its Python backend creates for itself.
RESERVED_PREFIX = "triton_python_backend_shm_region_"


class AlreadyExists(SkewlessError):
    kind = "ALREADY_EXISTS"


@dataclass(slots=True)
class Region:
    """One registered region: ``buffer`` is the mapped bytes from the region's own offset (system: a
    memoryview over an mmap; CUDA: see cuda.py), ``byte_size`` long."""

    name: str
    kind: str
    byte_size: int
    buffer: Any
    key: str = ""
    offset: int = 0
    device_id: int = 0
    closer: Any = None  # releases the mapping once nothing uses it (None: garbage collection does)
    read: Any = None  # device memory: a slice's bytes copied to the host (None: the slice is host memory)
    write: Any = None  # device memory: (slice, host bytes) copied into the slice

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name}
        if self.kind == SYSTEM:
            doc.update(key=self.key, offset=self.offset)
        else:
            doc["device_id"] = self.device_id
        doc["byte_size"] = self.byte_size
        return doc


def register_error(name: str, why: str = "invalid args") -> InvalidArgument:
    return InvalidArgument(f"failed to register shared memory region '{name}': {why}")


def open_system_region(name: str, key: str, offset: int, byte_size: int) -> Region:
    """Map ``byte_size`` bytes at ``offset`` of the POSIX shared-memory object ``key`` (as shm_open names it)."""
    if key.startswith(RESERVED_PREFIX) or key.lstrip("/").startswith(RESERVED_PREFIX):
        raise InvalidArgument(f"cannot register shared memory region '{name}' with key '{key}' as the key "
                              f"contains the reserved prefix '{RESERVED_PREFIX}'")
    if offset < 0 or byte_size <= 0:
        raise register_error(name)
    try:
        fd = _shm_open(key)
    except OSError:
        raise SkewlessError(f"Unable to open shared memory region: '{key}'") from None
    try:
        size = os.fstat(fd).st_size
        if offset + byte_size > size:
            raise register_error(name)
        # mmap offsets must be page-aligned: map from the aligned start, then slice
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(fd, offset + byte_size - start, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                            offset=start)
    except OSError as exc:
        raise register_error(name, f"unable to process address space or shared-memory descriptor: {exc}") from None
    finally:
        os.close(fd)
    view = memoryview(mapping)[offset - start:]
    return Region(name, SYSTEM, byte_size, view, key, offset, closer=_closer(mapping, view))


def _closer(mapping: mmap.mmap, view: memoryview):
    def close() -> bool:
        """Unmap now if no request holds a slice (True); else the last slice's release unmaps it."""
        view.release()
        try:
            mapping.close()
            return True
        except BufferError:
            return False
    return close


def _shm_open(key: str) -> int:
    try:
        import _posixshmem  # CPython's shm_open (what multiprocessing.shared_memory uses)
    except ImportError:  # pragma: no cover - not Linux/macOS
        return os.open(os.path.join("/dev/shm", key.lstrip("/")), os.O_RDWR)
    return _posixshmem.shm_open(key, os.O_RDWR, 0o600)


class RegionTable:
    """Registered regions of both kinds by name (one namespace, as in Triton)."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()  # register/unregister may run from a sibling's forwarded call

    def add(self, region: Region) -> None:
        with self._lock:
            if region.name in self._regions:
                if region.closer is not None:
                    region.closer()
                raise AlreadyExists(f"shared memory region '{region.name}' already in manager")
            self._regions[region.name] = region

    @staticmethod
    def add_exists_error(name: str) -> None:
        raise AlreadyExists(f"shared memory region '{name}' already in manager")

    def has(self, name: str) -> bool:
        return name in self._regions

    def remove(self, name: str, kind: str) -> None:
        """Unregister ``name`` (nothing if it is not a region of ``kind``): unmapped now, or once the
        requests using it have finished."""
        with self._lock:
            region = self._regions.get(name)
            if region is None or region.kind != kind:
                return
            del self._regions[name]
        if region.closer is not None and not region.closer():
            log.info("shared memory region '%s' will be unregistered after in-flight requests complete", name)

    def remove_all(self, kind: str) -> None:
        for name in [n for n, r in list(self._regions.items()) if r.kind == kind]:
            self.remove(name, kind)

    def status(self, name: str, kind: str) -> list[dict[str, Any]]:
        if not name:
            return [r.status() for r in self._regions.values() if r.kind == kind]
        region = self._regions.get(name)
        what = "cuda" if kind == CUDA else "system"
        if region is None:
            raise NotFound(f"Unable to find {what} shared memory region: '{name}'")
        if region.kind != kind:
            raise NotFound(f"The region named '{name}' is registered as {_words(region.kind)} shared memory, "
                           f"not {_words(kind)} shared memory")
        return [region.status()]

    def slice(self, name: str, offset: int, byte_size: int) -> tuple[Region, Any]:
        """The region and its bytes [offset, offset + byte_size), validated as Triton does."""
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find shared memory region: '{name}'")
        if offset < 0 or offset >= region.byte_size:
            raise InvalidArgument(f"Invalid offset for shared memory region: '{name}'")
        if byte_size < 0 or offset + byte_size > region.byte_size:
            raise InvalidArgument(f"Invalid offset + byte size for shared memory region: '{name}'")
        return region, region.buffer[offset:offset + byte_size]


def _words(kind: str) -> str:
    return "CUDA" if kind == CUDA else "system"

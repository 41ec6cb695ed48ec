"""The region table in-process, on real POSIX shared memory: mapping, bounds, and the deferred unmapping
that keeps an in-flight request's slices valid after its region is unregistered."""

from __future__ import annotations

import gc
import uuid
import weakref
from multiprocessing import shared_memory

import numpy as np
import pytest

from skewless.server.errors import InvalidArgument, NotFound
from skewless.server.shm.regions import SYSTEM, AlreadyExists, RegionTable, open_system_region


@pytest.fixture
def segment():
    seg = shared_memory.SharedMemory(f"skewless_t_{uuid.uuid4().hex[:10]}", create=True, size=3 * 4096)
    yield seg
    seg.close()
    seg.unlink()


def test_offset_mapping_and_bounds(segment):
    segment.buf[5000:5004] = b"abcd"
    table = RegionTable()
    table.add(open_system_region("r", "/" + segment.name, 5000, 100))  # an offset that is not page-aligned
    region, view = table.slice("r", 0, 4)
    assert bytes(view) == b"abcd" and region.status() == {"name": "r", "key": "/" + segment.name, "offset": 5000,
                                                          "byte_size": 100}
    with pytest.raises(InvalidArgument, match="Invalid offset for shared memory region: 'r'"):
        table.slice("r", 100, 1)
    with pytest.raises(InvalidArgument, match="Invalid offset \\+ byte size for shared memory region: 'r'"):
        table.slice("r", 50, 51)
    with pytest.raises(NotFound, match="Unable to find shared memory region: 'x'"):
        table.slice("x", 0, 1)
    with pytest.raises(AlreadyExists, match="shared memory region 'r' already in manager"):
        table.add(open_system_region("r", "/" + segment.name, 0, 10))
    with pytest.raises(InvalidArgument, match="failed to register shared memory region 'big': invalid args"):
        open_system_region("big", "/" + segment.name, 4096, 3 * 4096)
    with pytest.raises(InvalidArgument, match="reserved prefix"):
        open_system_region("p", "/triton_python_backend_shm_region_1", 0, 10)
    del view, region
    table.remove_all(SYSTEM)
    assert table.status("", SYSTEM) == []


def test_unregister_defers_unmapping_until_slices_are_gone(segment):
    table = RegionTable()
    region = open_system_region("r", "/" + segment.name, 0, 4096)
    mapping = region.buffer.obj  # the mmap behind the region
    table.add(region)
    del region
    view = table.slice("r", 0, 16)[1]
    arr = np.frombuffer(view, np.uint8)  # what decoding makes of an input in shared memory
    table.remove("r", SYSTEM)
    assert not table.has("r")
    assert not mapping.closed, "unmapped while a request still holds a slice"
    segment.buf[0] = 7
    assert arr[0] == 7  # still the live mapping
    alive = weakref.ref(mapping)
    del arr, view, mapping
    gc.collect()
    assert alive() is None, "the last slice gone, the mapping must be freed"
    # with nothing using it, unregistering unmaps at once
    table.add(open_system_region("r", "/" + segment.name, 0, 4096))
    mapping = table.slice("r", 0, 1)[0].buffer.obj
    table.remove("r", SYSTEM)
    assert mapping.closed

# cython: language_level=3
"""BYTES tensor codec of the KServe v2 protocol: each element is a 4-byte little-endian length, then bytes.

A Python loop over a 64k-element string tensor costs milliseconds; these loops are C. The scan that
validates lengths runs without the GIL, and only object creation (which onnxruntime needs) holds it.
"""

import numpy as np
cimport numpy as cnp
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8String, PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

cnp.import_array()


class BytesFormatError(ValueError):
    """The serialized BYTES tensor is malformed (truncated length prefix, overrun, or wrong count)."""


cdef inline uint32_t _read_le32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef int64_t _walk(const uint8_t* src, Py_ssize_t size, int64_t max_count, int64_t* offsets, int64_t base,
                   uint8_t* dst, int64_t cap, int64_t* total, int64_t* error_at) noexcept nogil:
    """Validate one serialized BYTES tensor; return its element count, or < 0: -1 truncated length prefix,
    -2 more elements than ``max_count``, -3 an element overruns the buffer, -4 more bytes than ``cap``.

    With ``offsets`` set, also write each element's end (``base`` + bytes so far) to ``offsets[1..]`` and copy
    the element bytes, without their length prefixes, to ``dst``: the Arrow layout the kernel reads. ``cap``
    bounds the bytes copied (-4 when a payload holds more than its element count allows).
    """
    cdef Py_ssize_t pos = 0
    cdef int64_t n = 0, written = 0
    cdef uint32_t length
    while pos < size:
        if n >= max_count:
            error_at[0] = pos
            return -2
        if size - pos < 4:
            error_at[0] = pos
            return -1
        length = _read_le32(src + pos)
        pos += 4
        if <Py_ssize_t>length > size - pos:
            error_at[0] = pos - 4
            return -3
        if offsets != NULL:
            if written + length > cap:
                error_at[0] = pos - 4
                return -4
            memcpy(dst + written, src + pos, length)
            offsets[n + 1] = base + written + length
        written += length
        pos += length
        n += 1
    total[0] = written
    return n


cdef _raise_format(int64_t n, int64_t error_at, Py_ssize_t size, Py_ssize_t count):
    if n == -1:
        raise BytesFormatError(
            f"truncated length prefix at byte {error_at}: each element needs a 4-byte little-endian length")
    if n == -3:
        raise BytesFormatError(f"element length at byte {error_at} runs past the end of the {size}-byte buffer")
    if n == -2:
        raise BytesFormatError(f"more than the expected {count} elements in the {size}-byte buffer")
    raise BytesFormatError(f"expected {count} elements, got {n} in the {size}-byte buffer")


def decode_bytes(const uint8_t[::1] buf not None, Py_ssize_t count, bint utf8=False):
    """Split a serialized BYTES tensor into a 1-D object array of ``count`` bytes (or, with utf8, str).

    onnxruntime's string tensors take only str, hence utf8. Raises BytesFormatError naming the byte offset
    of the first malformed element, or the index of the first element that is not valid UTF-8.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    cdef Py_ssize_t size = buf.shape[0]
    cdef int64_t error_at = 0, total = 0
    cdef int64_t n = 0
    cdef const uint8_t* data = &buf[0] if size > 0 else NULL
    if size > 0:
        with nogil:
            n = _walk(data, size, count, NULL, 0, NULL, 0, &total, &error_at)
    if n != count:
        _raise_format(n, error_at, size, count)
    # Second pass: the elements packed end to end, ``ends[i]`` where element i stops (the Arrow layout).
    cdef cnp.ndarray[cnp.int64_t, ndim=1] ends = np.zeros(count + 1, dtype=np.int64)
    cdef cnp.ndarray[cnp.uint8_t, ndim=1] packed = np.empty(max(total, 1), dtype=np.uint8)
    cdef int64_t* off = <int64_t*>cnp.PyArray_DATA(ends)
    cdef uint8_t* dst = <uint8_t*>cnp.PyArray_DATA(packed)
    if size > 0:
        with nogil:
            _walk(data, size, count, off, 0, dst, total, &total, &error_at)
    out = np.empty(count, dtype=object)
    cdef object[:] view = out
    cdef Py_ssize_t i
    if not utf8:
        for i in range(count):
            view[i] = PyBytes_FromStringAndSize(<const char*>dst + off[i], <Py_ssize_t>(off[i + 1] - off[i]))
        return out
    for i in range(count):
        try:
            view[i] = PyUnicode_DecodeUTF8(<const char*>dst + off[i], <Py_ssize_t>(off[i + 1] - off[i]), NULL)
        except UnicodeDecodeError as exc:
            raise BytesFormatError(
                f"element {i} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                "string tensors must hold UTF-8 text") from None
    return out


def encode_bytes(cnp.ndarray arr not None):
    """Serialize an array of bytes/str (any shape, C order) to the length-prefixed wire form."""
    cdef cnp.ndarray flat = np.ascontiguousarray(arr).reshape(-1)
    cdef Py_ssize_t n = flat.shape[0]
    cdef Py_ssize_t i, total = 0, length
    cdef list parts = [None] * n
    cdef object item
    kind = flat.dtype.kind
    for i in range(n):
        item = flat[i]
        if isinstance(item, bytes):
            pass
        elif isinstance(item, str):
            item = PyUnicode_AsUTF8String(item)
        elif kind == "S" or kind == "U" or isinstance(item, (bytearray, memoryview)):
            item = bytes(item)
        else:
            item = str(item).encode("utf-8")
        if PyBytes_GET_SIZE(item) > 0xFFFFFFFF:
            raise ValueError("a BYTES element cannot exceed 4 GiB")
        parts[i] = item
        total += 4 + PyBytes_GET_SIZE(item)
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* dst = PyBytes_AS_STRING(out)
    cdef Py_ssize_t pos = 0
    cdef uint32_t l32
    for i in range(n):
        item = parts[i]
        length = PyBytes_GET_SIZE(item)
        l32 = <uint32_t>length
        dst[pos] = <char>(l32 & 0xFF)
        dst[pos + 1] = <char>((l32 >> 8) & 0xFF)
        dst[pos + 2] = <char>((l32 >> 16) & 0xFF)
        dst[pos + 3] = <char>((l32 >> 24) & 0xFF)
        memcpy(dst + pos + 4, PyBytes_AS_STRING(item), length)
        pos += 4 + length
    return out


# ---- Arrow-style string columns, for the feature transform (no Python object per value) ----------------

def check_bytes(const uint8_t[::1] buf not None, Py_ssize_t count):
    """Validate a serialized BYTES tensor of ``count`` elements without creating any object.

    Returns the total length of its elements (the size of its Arrow data buffer). The server calls this
    when it decodes a request for a model with a feature spec, so that a malformed tensor fails that request
    alone, and later hands the wire bytes themselves to ``bytes_to_arrow``.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    cdef Py_ssize_t size = buf.shape[0]
    cdef int64_t n = 0, total = 0, error_at = 0
    if size > 0:
        with nogil:
            n = _walk(&buf[0], size, count, NULL, 0, NULL, 0, &total, &error_at)
    if n != count:
        _raise_format(n, error_at, size, count)
    return total


def bytes_to_arrow(payloads, counts):
    """Concatenate serialized BYTES tensors into one Arrow-style column: (int64 offsets, uint8 data).

    ``payloads`` are buffers in the wire format (4-byte little-endian length, then the bytes), ``counts``
    their element counts; the result has sum(counts) + 1 offsets, starting at 0. This is how the batcher
    merges the string columns of a batch's requests for the feature kernel: one copy of the bytes, no
    Python object per value, and one nogil pass. Every payload is validated again (a malformed one raises
    BytesFormatError). Contiguous uint8 numpy arrays are read through their data pointer (~20x cheaper than
    a buffer-protocol view, which matters with 64 one-row requests per batch); other buffers are viewed.
    """
    cdef Py_ssize_t k = len(payloads), i
    if len(counts) != k:
        raise ValueError("payloads and counts differ in length")
    cdef list keep = [None] * k
    cdef cnp.ndarray arr
    cdef const uint8_t[::1] view
    cdef int64_t n_total = 0, data_total = 0, c
    cdef int64_t* meta = <int64_t*>malloc(3 * max(k, 1) * sizeof(int64_t))  # (pointer, size, count) each
    if meta == NULL:
        raise MemoryError()
    try:
        for i in range(k):
            p = payloads[i]
            if isinstance(p, np.ndarray) and cnp.PyArray_TYPE(<cnp.ndarray>p) == cnp.NPY_UINT8 \
                    and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>p):
                arr = <cnp.ndarray>p
                meta[3 * i] = <int64_t>cnp.PyArray_DATA(arr)
                meta[3 * i + 1] = cnp.PyArray_NBYTES(arr)
            else:
                view = p
                meta[3 * i] = <int64_t>(&view[0]) if view.shape[0] > 0 else 0
                meta[3 * i + 1] = view.shape[0]
                p = view
            keep[i] = p
            c = counts[i]
            if c < 0:
                raise ValueError("counts must be >= 0")
            meta[3 * i + 2] = c
            if meta[3 * i + 1] < 4 * c:  # too short for its count: say why, before any byte is copied
                check_bytes(p, c)
                raise BytesFormatError(f"payload {i} is too short for {c} elements")
            n_total += c
            data_total += meta[3 * i + 1] - 4 * c  # exact for a valid payload; more bytes are caught below
        offsets = np.empty(n_total + 1, dtype=np.int64)
        data = np.empty(data_total, dtype=np.uint8)
        _merge_payloads(meta, k, <int64_t*>cnp.PyArray_DATA(offsets), <uint8_t*>cnp.PyArray_DATA(data), keep)
        return offsets, data
    finally:
        free(meta)


cdef _merge_payloads(const int64_t* meta, Py_ssize_t k, int64_t* off, uint8_t* dst, list keep):
    cdef int64_t row = 0, base = 0, n = 0, total = 0, error_at = 0, c, size
    cdef Py_ssize_t i, bad = -1
    off[0] = 0
    with nogil:
        for i in range(k):
            size = meta[3 * i + 1]
            c = meta[3 * i + 2]
            n = 0
            total = 0
            if size > 0:
                # cap: the bytes this payload owns in ``dst`` if it is valid; more means it is not.
                n = _walk(<const uint8_t*>meta[3 * i], size, c, off + row, base, dst + base, size - 4 * c,
                          &total, &error_at)
            if n != c:
                bad = i
                break
            row += c
            base += total
    if bad < 0:
        return
    if n == -4:  # its bytes do not add up to its count: find out why, for the message
        check_bytes(keep[bad], meta[3 * bad + 2])
        raise BytesFormatError(f"payload {bad} does not hold {meta[3 * bad + 2]} elements")
    _raise_format(n, error_at, meta[3 * bad + 1], meta[3 * bad + 2])

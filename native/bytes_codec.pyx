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
from libc.string cimport memcpy

cnp.import_array()


class BytesFormatError(ValueError):
    """The serialized BYTES tensor is malformed (truncated length prefix, overrun, or wrong count)."""


cdef inline uint32_t _read_le32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef int64_t _scan(const uint8_t* data, Py_ssize_t size, int64_t* offsets, int64_t max_count,
                   int64_t* error_at) noexcept nogil:
    """Fill offsets[2*i], offsets[2*i+1] with start and length; return element count, or -1 on error."""
    cdef Py_ssize_t pos = 0
    cdef int64_t n = 0
    cdef uint32_t length
    while pos < size:
        if n >= max_count:
            error_at[0] = pos
            return -2
        if size - pos < 4:
            error_at[0] = pos
            return -1
        length = _read_le32(data + pos)
        pos += 4
        if <Py_ssize_t>length > size - pos:
            error_at[0] = pos - 4
            return -3
        offsets[2 * n] = pos
        offsets[2 * n + 1] = length
        pos += length
        n += 1
    return n


def decode_bytes(const uint8_t[::1] buf not None, Py_ssize_t count, bint utf8=False):
    """Split a serialized BYTES tensor into a 1-D object array of ``count`` bytes (or, with utf8, str).

    onnxruntime's string tensors take only str, hence utf8. Raises BytesFormatError naming the byte offset
    of the first malformed element, or the index of the first element that is not valid UTF-8.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    cdef Py_ssize_t size = buf.shape[0]
    cdef cnp.ndarray[cnp.int64_t, ndim=1] offsets = np.empty(2 * count + 2, dtype=np.int64)
    cdef int64_t* off = <int64_t*>cnp.PyArray_DATA(offsets)
    cdef int64_t error_at = 0
    cdef int64_t n
    cdef const uint8_t* data = &buf[0] if size > 0 else NULL
    with nogil:
        n = _scan(data, size, off, count, &error_at) if size > 0 else 0
    if n == -1:
        raise BytesFormatError(
            f"truncated length prefix at byte {error_at}: each element needs a 4-byte little-endian length")
    if n == -3:
        raise BytesFormatError(
            f"element length at byte {error_at} runs past the end of the {size}-byte buffer")
    if n == -2:
        raise BytesFormatError(f"more than the expected {count} elements in the {size}-byte buffer")
    if n != count:
        raise BytesFormatError(f"expected {count} elements, got {n} in the {size}-byte buffer")
    out = np.empty(count, dtype=object)
    cdef object[:] view = out
    cdef Py_ssize_t i
    if not utf8:
        for i in range(count):
            view[i] = PyBytes_FromStringAndSize(<const char*>data + off[2 * i], <Py_ssize_t>off[2 * i + 1])
        return out
    for i in range(count):
        try:
            view[i] = PyUnicode_DecodeUTF8(<const char*>data + off[2 * i], <Py_ssize_t>off[2 * i + 1], NULL)
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

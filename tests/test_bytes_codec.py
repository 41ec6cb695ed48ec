"""skewless.native.bytes_codec against a plain-Python reference of the v2 BYTES wire format."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from skewless.native.bytes_codec import BytesFormatError, decode_bytes, encode_bytes

byte_lists = st.lists(st.binary(max_size=64), max_size=50)
# Any Unicode text but lone surrogates, which UTF-8 cannot encode.
text_lists = st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=20), max_size=30)


def reference_encode(items) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def object_array(items) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


@given(byte_lists)
def test_roundtrip_bytes(items):
    wire = encode_bytes(object_array(items))
    assert wire == reference_encode(items)
    out = decode_bytes(wire, len(items))
    assert out.dtype == object and out.shape == (len(items),)
    assert list(out) == items
    assert all(type(v) is bytes for v in out)


@given(text_lists)
def test_roundtrip_utf8(items):
    wire = encode_bytes(object_array(items))
    assert wire == reference_encode([s.encode() for s in items])
    assert list(decode_bytes(wire, len(items), utf8=True)) == items
    assert list(decode_bytes(wire, len(items))) == [s.encode() for s in items]


def test_lone_surrogate_cannot_be_encoded():
    with pytest.raises(UnicodeEncodeError):
        encode_bytes(object_array(["ok", "\ud800"]))


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=6), st.data())
def test_multidimensional_and_numpy_string_arrays(items, data):
    n = len(items)
    arr = np.empty(n, dtype=object)
    arr[:] = items
    shape = (1, n) if data.draw(st.booleans()) else (n, 1)
    assert encode_bytes(arr.reshape(shape)) == reference_encode(items)
    fixed = np.array([b.replace(b"\0", b"x") for b in items], dtype="S")  # numpy S strips trailing NULs
    assert encode_bytes(fixed) == reference_encode([b.replace(b"\0", b"x").rstrip(b"\0") for b in items])


def test_encode_str_and_non_string_objects():
    assert encode_bytes(np.array(["é", "ab"])) == reference_encode(["é".encode(), b"ab"])
    assert encode_bytes(np.array([1, 2.5], dtype=object)) == reference_encode([b"1", b"2.5"])
    assert encode_bytes(np.empty((0, 3), dtype=object)) == b""


@given(byte_lists, st.data())
def test_truncated_buffers_are_rejected(items, data):
    wire = reference_encode(items)
    if not wire:
        return
    cut = data.draw(st.integers(0, len(wire) - 1))
    truncated = wire[:cut]
    # Whatever the cut, the result is either an error or (at an element boundary) a count mismatch error.
    with pytest.raises(BytesFormatError):
        decode_bytes(truncated, len(items))


@given(byte_lists, st.integers(-3, 3))
def test_wrong_count_is_rejected(items, delta):
    wire = reference_encode(items)
    count = len(items) + delta
    if delta == 0 or count < 0:
        return
    with pytest.raises(BytesFormatError):
        decode_bytes(wire, count)


@pytest.mark.parametrize(("wire", "count", "message"), [
    (b"\x01\x00", 1, "truncated length prefix at byte 0"),
    (reference_encode([b"ab"]) + b"\x00\x00\x00", 2, "truncated length prefix at byte 6"),
    (b"\x05\x00\x00\x00abc", 1, "element length at byte 0 runs past the end of the 7-byte buffer"),
    (b"\xff\xff\xff\xff", 1, "element length at byte 0 runs past the end"),
    (reference_encode([b"a", b"b"]), 1, "more than the expected 1 elements"),
    (reference_encode([b"a"]), 2, "expected 2 elements, got 1"),
    (b"", 1, "expected 1 elements, got 0"),
])
def test_malformed_messages(wire, count, message):
    with pytest.raises(BytesFormatError, match=message):
        decode_bytes(wire, count)


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3\x28", b"ok\xed\xa0\x80", b"\xf0\x9f\x98"])
def test_invalid_utf8(bad):
    wire = reference_encode([b"fine", bad])
    assert list(decode_bytes(wire, 2)) == [b"fine", bad]  # bytes mode does not care
    with pytest.raises(BytesFormatError, match="element 1 is not valid UTF-8"):
        decode_bytes(wire, 2, utf8=True)


def test_empty_and_zero_count():
    assert decode_bytes(b"", 0).shape == (0,)
    assert list(decode_bytes(reference_encode([b""]), 1)) == [b""]
    with pytest.raises(ValueError):
        decode_bytes(b"", -1)


def test_accepts_buffer_protocol_objects():
    wire = reference_encode([b"abc", b"de"])
    assert list(decode_bytes(bytearray(wire), 2)) == [b"abc", b"de"]
    assert list(decode_bytes(memoryview(wire), 2)) == [b"abc", b"de"]
    assert list(decode_bytes(np.frombuffer(wire, np.uint8), 2)) == [b"abc", b"de"]


def test_bytes_format_error_is_a_value_error():
    assert issubclass(BytesFormatError, ValueError)

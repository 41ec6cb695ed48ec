"""HTTP/2 frames and the gRPC bits carried in headers: what the transport writes, byte for byte.

Response headers are encoded as HPACK literals without indexing and without Huffman coding (RFC 7541 6.2.2):
always valid, nothing to keep in sync with the peer's decoder, and the fixed ones are encoded once.
"""

from __future__ import annotations

import base64
import re

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types (RFC 9113 6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# settings
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = \
    range(1, 7)
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM = 0xB

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
DEFAULT_MAX_FRAME = 16_384


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags)) + stream.to_bytes(4, "big") + payload


def settings_frame(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in values.items()))


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, increment.to_bytes(4, "big"))


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, code.to_bytes(4, "big"))


def goaway(last_stream: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, last_stream.to_bytes(4, "big") + code.to_bytes(4, "big") + debug)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK integer (RFC 7541 5.1) with ``first``'s high bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(raw: bytes) -> bytes:
    return _integer(len(raw), 7, 0) + raw


def literal(name: bytes, value: bytes) -> bytes:
    """A header as a literal field without indexing, new name."""
    return b"\x00" + _string(name) + _string(value)


STATUS_200 = b"\x88"  # ":status: 200", static table entry 8
# "content-type: application/grpc": literal without indexing, name from static table entry 31
CONTENT_TYPE_GRPC = _integer(31, 4, 0) + _string(b"application/grpc")
RESPONSE_HEADERS = STATUS_200 + CONTENT_TYPE_GRPC
# a request that is not gRPC: ":status: 415" (name from static entry 8), "content-type: text/plain"
STATUS_415 = _integer(8, 4, 0) + _string(b"415") + _integer(31, 4, 0) + _string(b"text/plain")
TRAILERS_OK = literal(b"grpc-status", b"0")


def metadata_block(metadata) -> bytes:
    """Custom metadata as header fields: keys lowercase; ``-bin`` values base64 without padding (gRPC's wire
    form); text values must be printable ASCII."""
    out = []
    for key, value in metadata or ():
        k = key.lower()
        if k.endswith("-bin"):
            raw = value if isinstance(value, bytes) else value.encode()
            v = base64.b64encode(raw).rstrip(b"=")
        else:
            v = value.encode("ascii") if isinstance(value, str) else bytes(value)
        out.append(literal(k.encode("ascii"), v))
    return b"".join(out)


_UNRESERVED = frozenset(range(0x20, 0x7F)) - {ord("%")}


def percent_encode(message: str) -> bytes:
    """grpc-message: UTF-8, every byte outside printable ASCII (and '%') as %XX."""
    raw = message.encode("utf-8", "replace")
    if all(b in _UNRESERVED for b in raw):
        return raw
    return b"".join(bytes((b,)) if b in _UNRESERVED else b"%%%02X" % b for b in raw)


def trailers(code: int, message: str | None, metadata=()) -> bytes:
    out = literal(b"grpc-status", str(code).encode())
    if message:
        out += literal(b"grpc-message", percent_encode(message))
    return out + metadata_block(metadata)


_TIMEOUT = re.compile(rb"^(\d{1,8})([HMSmun])$")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout ("100m", "5S", ...) in seconds; None if malformed."""
    m = _TIMEOUT.match(value)
    if m is None:
        return None
    return int(m.group(1)) * _UNITS[m.group(2)]


def decode_binary(value: bytes) -> bytes:
    """A ``-bin`` metadata value: base64, padded or not (several values may be joined by commas)."""
    parts = value.split(b",")
    return b"".join(base64.b64decode(p.strip() + b"=" * (-len(p.strip()) % 4)) for p in parts)

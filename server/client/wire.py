"""The tensors of one request: a row range of the encoded columns -> tritonclient InferInputs.

Missing values follow the agreed wire design (issue 24): a raw input ``NAME`` whose rows in this request
include missing elements gets a companion input ``NAME__missing`` (BOOL, same shape, True = missing); a
request without missing elements in a column sends no companion for it. Float inputs carry missing as NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .columns import ByteColumn, Column
from .schema import RawInput


@dataclass(frozen=True)
class WireTensor:
    """One input of a request, independent of the transport."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None  # numeric and BOOL tensors, already shaped
    payload: bytes | None = None  # BYTES: the serialized elements (4-byte little-endian length, then bytes)


def serialize_bytes(col: ByteColumn, start: int, stop: int) -> bytes:
    """The BYTES wire form of elements [start, stop), built with numpy (no Python object per element)."""
    offsets = col.offsets[start: stop + 1]
    n = len(offsets) - 1
    if n <= 0:
        return b""
    lengths = np.diff(offsets)
    if lengths.size and lengths.max() > 0xFFFFFFFF:
        raise ValueError("a BYTES element is longer than 4 GiB")
    body = int(offsets[-1] - offsets[0])
    out = np.empty(4 * n + body, np.uint8)
    prefix = (offsets[:-1] - offsets[0]) + 4 * np.arange(n, dtype=np.int64)  # where each length goes
    slots = (prefix[:, None] + np.arange(4)).ravel()
    out[slots] = lengths.astype("<u4").view(np.uint8)
    if body:
        is_data = np.ones(out.size, np.bool_)
        is_data[slots] = False
        out[is_data] = col.data[offsets[0]: offsets[-1]]
    return out.tobytes()


def request_tensors(inputs: Sequence[RawInput], columns: Mapping[str, Column], start: int,
                    stop: int) -> list[WireTensor]:
    """The inputs of the request that carries rows [start, stop): each raw column, plus ``NAME__missing``
    for the columns with a missing element among these rows."""
    out: list[WireTensor] = []
    rows = stop - start
    for raw in inputs:
        col = columns[raw.name]
        shape = tuple(raw.wire_shape(rows))
        if isinstance(col.values, ByteColumn):
            out.append(WireTensor(raw.name, "BYTES", shape, payload=serialize_bytes(col.values, start, stop)))
        else:
            out.append(WireTensor(raw.name, raw.datatype, shape, array=col.values[start:stop].reshape(shape)))
        if col.mask is not None and raw.companion is not None:
            mask = col.mask[start:stop]
            if mask.any():
                out.append(WireTensor(raw.companion, "BOOL", shape, array=mask.reshape(shape)))
    return out


def grpc_inputs(tensors: Sequence[WireTensor]) -> list:
    import tritonclient.grpc as grpcclient

    inputs = []
    for t in tensors:
        inp = grpcclient.InferInput(t.name, list(t.shape), t.datatype)
        if t.payload is not None:
            # tritonclient serializes BYTES with one Python call per element; hand it the bytes built above.
            inp._raw_content = t.payload
        else:
            inp.set_data_from_numpy(t.array)
        inputs.append(inp)
    return inputs


def http_inputs(tensors: Sequence[WireTensor]) -> list:
    """Inputs in the binary-data extension (exact bytes, no JSON number formatting)."""
    import tritonclient.http as httpclient

    inputs = []
    for t in tensors:
        inp = httpclient.InferInput(t.name, list(t.shape), t.datatype)
        if t.payload is not None:
            inp._raw_data = t.payload  # as in grpc_inputs: the serialized BYTES, sent as binary data
            inp._parameters["binary_data_size"] = len(t.payload)
        else:
            inp.set_data_from_numpy(t.array, binary_data=True)
        inputs.append(inp)
    return inputs

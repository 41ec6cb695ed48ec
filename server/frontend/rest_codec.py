"""KServe v2 HTTP/REST bodies <-> the data plane's tensors: JSON ``data`` and Triton's binary tensor extension.

Parsing only turns the transport format into (header, raw little-endian buffer) pairs; whether the input
exists, has the right datatype, shape and element count is the data plane's to say, with the gRPC path's
messages. Binary inputs are zero-copy slices of the request body; JSON ``data`` goes through one
``numpy.asarray`` of the declared datatype. Binary tensor extension: the JSON header is the first
``Inference-Header-Content-Length`` bytes, then each input with ``parameters.binary_data_size`` in order.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from skewless.native.bytes_codec import BytesFormatError, decode_bytes, encode_bytes

from ..codec import DATATYPES, format_shape
from ..decode import TensorHeader
from ..errors import InvalidArgument
from ..features import missing
from ..json_depth import check_json_depth

_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
INT64_MAX = 2**63 - 1


@dataclass
class RestInferRequest:
    id: str = ""
    inputs: list[TensorHeader] = field(default_factory=list)
    raw: list[bytes | memoryview] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    output_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    nulls: list[str] = field(default_factory=list)  # inputs whose JSON 'data' held null (features/missing.py)

    def binary_output(self, name: str) -> bool:
        """Triton: an output's own ``binary_data`` wins over the request's ``binary_data_output``."""
        own = self.output_parameters.get(name, {}).get("binary_data")
        return bool(self.parameters.get("binary_data_output", False)) if own is None else bool(own)


def header_length(value: str | None, body_size: int) -> int | None:
    """The ``Inference-Header-Content-Length`` header, checked against the body."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise InvalidArgument(f"Inference-Header-Content-Length must be an integer, got '{value}'") from None
    if not 0 < n <= body_size:
        raise InvalidArgument(
            f"Inference-Header-Content-Length {n} is out of range: the request body has {body_size} bytes")
    return n


def load_json(data: bytes | memoryview, what: str) -> Any:
    """A JSON body, refused (400) when malformed or nested deeper than Triton's limit."""
    data = bytes(data) if isinstance(data, memoryview) else data
    try:
        check_json_depth(data)
        try:
            # orjson parses a body of 16,384 floats in ~0.5 ms where the standard library takes ~5 ms (the heavy
            # model's REST point of benchmarks/peers.py); both round every number correctly, so the values agree.
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # NaN/Infinity literals, integers beyond 64 bits, lone surrogates: the standard library decides
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"malformed JSON in the {what}: {exc}") from None


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def parse_infer_request(body: bytes, json_size: int | None) -> RestInferRequest:
    """The request JSON (the whole body, or its first ``json_size`` bytes) and the binary blobs after it."""
    view = memoryview(body)
    doc = _object(load_json(view[:json_size] if json_size is not None else body, "inference request"),
                  "the inference request")
    req = RestInferRequest()
    req.id = doc.get("id", "")
    if not isinstance(req.id, str):
        raise InvalidArgument("request 'id' must be a string")
    req.parameters = _object(doc.get("parameters", {}), "request 'parameters'")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument("the inference request needs an 'inputs' list")
    offset = json_size if json_size is not None else len(body)
    for i, tensor in enumerate(inputs):
        header, params = _tensor_header(tensor, i)
        _one_source(tensor, params)
        if any(k in params for k in _SHARED_MEMORY):  # read from a registered region (server/shm/)
            req.inputs.append(TensorHeader(header.name, header.datatype, header.shape, params))
            continue
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in tensor:
                raise InvalidArgument(f"input '{header.name}' has both 'data' and 'binary_data_size'")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidArgument(f"input '{header.name}': 'binary_data_size' must be a non-negative integer")
            if offset + size > len(body):
                raise InvalidArgument(
                    f"input '{header.name}' has binary_data_size {size} but only {len(body) - offset} bytes of "
                    "binary data are left in the request body")
            req.raw.append(view[offset:offset + size])
            offset += size
        elif "data" in tensor:
            _check_element_count(header)
            try:
                req.raw.append(json_to_raw(header.name, header.datatype, tensor["data"]))
            except InvalidArgument:  # null in 'data' (missing): the values, then a NAME__missing companion
                if not missing.has_null(tensor["data"]):
                    raise
                values, mask = missing.split_json_nulls(header.datatype, tensor["data"])
                req.raw.append(json_to_raw(header.name, header.datatype, values))
                req.inputs.append(header)
                req.nulls.append(header.name)
                header = TensorHeader(missing.companion(header.name), "BOOL", header.shape)
                req.raw.append(mask.tobytes())
        else:
            raise InvalidArgument(f"input '{header.name}' has neither 'data' nor 'binary_data_size'")
        req.inputs.append(header)
    if offset != len(body):
        raise InvalidArgument(
            f"the request body has {len(body) - offset} bytes after the JSON header and the inputs' "
            "binary_data_size: they must add up to the body size")
    outputs = doc.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidArgument("request 'outputs' must be a list")
    for o in outputs:
        o = _object(o, "each requested output")
        name = o.get("name")
        if not isinstance(name, str):
            raise InvalidArgument("each requested output needs a string 'name'")
        params = _object(o.get("parameters", {}), f"parameters of output '{name}'")
        req.output_names.append(name)
        req.output_parameters[name] = params
    return req


def _one_source(tensor: dict, params: dict) -> None:
    """Triton's rule: an input's data comes from exactly one of 'data', binary data or a shared-memory region."""
    found = [what for what, present in (("'data'", "data" in tensor),
                                        ("'binary_data_size'", "binary_data_size" in params),
                                        ("'shared_memory_region'", "shared_memory_region" in params)) if present]
    if len(found) > 1:
        raise InvalidArgument("Input must set only one of the following fields: 'data', 'binary_data_size' in "
                              "'parameters', 'shared_memory_region' in 'parameters'. But set " + " ".join(found))


def _tensor_header(tensor: Any, index: int) -> tuple[TensorHeader, dict]:
    if not isinstance(tensor, dict):
        raise InvalidArgument(f"input {index} must be a JSON object")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str):
        raise InvalidArgument(f"input {index} needs a string 'name'")
    if not isinstance(datatype, str):
        raise InvalidArgument(f"input '{name}' needs a string 'datatype'")
    if not isinstance(shape, list):
        raise InvalidArgument(f"input '{name}' needs a 'shape' list of integers")
    # Triton reads each dimension as a JSON uint64, in its words. Triton's status for it is 500 (its JSON reader's
    # errors are internal ones); the request is at fault, so 400, as for every other malformed request.
    if not all(type(d) is int and 0 <= d < 2**64 for d in shape):
        raise InvalidArgument("Unable to parse 'shape': attempt to access JSON non-unsigned-integer as "
                              "unsigned-integer")
    return TensorHeader(name, datatype, shape), _object(tensor.get("parameters", {}), f"parameters of input '{name}'")


def _check_element_count(header: TensorHeader) -> None:
    """Triton's checks on the shape of an input given as JSON ``data``, before the data is read (so before the
    model's own shape and batch checks): each dimension an int64, the element count and byte size within int64."""
    name, shape = header.name, header.shape
    if any(d > INT64_MAX for d in shape):
        raise InvalidArgument(f"invalid shape for input '{name}': shape {format_shape(shape)} contains one or more "
                              "invalid dimensions")
    count = math.prod(shape)
    if count > INT64_MAX:
        raise InvalidArgument(f"invalid shape for input '{name}': shape {format_shape(shape)} causes total element "
                              f"count to exceed maximum size of {INT64_MAX}")
    dt = DATATYPES.get(header.datatype)
    size = dt.itemsize if dt is not None else 0
    if size > 1 and count > INT64_MAX // size:
        raise InvalidArgument(f"byte size overflow for input '{name}': element count ({count}) * data type size "
                              f"({size}) exceeds maximum allowed size ({INT64_MAX})")


# -- JSON data -> raw buffer ---------------------------------------------------------------------------------
_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}  # numpy kinds a JSON array may have, by target kind


def json_to_raw(name: str, datatype: str, data: Any) -> bytes:
    """JSON ``data`` (flat or nested) as the raw buffer of ``datatype``; a value that cannot be one is a 400.

    The element count is left to the data plane (its byte-size check), as for raw gRPC inputs."""
    dt = DATATYPES.get(datatype)
    if dt is None:
        return b""  # the data plane rejects the datatype, naming it
    if not isinstance(data, list):
        data = [data]
    if dt.name == "BYTES":
        flat = _flat(name, data, object)
        if not all(type(v) is str for v in flat):
            raise InvalidArgument(f"input '{name}' of datatype BYTES expects strings in 'data'")
        return encode_bytes(flat)
    if dt.name == "BF16":
        return _bf16_bits(_flat(name, data, np.float32, "FP32")).tobytes()
    arr = _flat(name, data, None)
    kind, target = arr.dtype.kind, dt.numpy
    if arr.size == 0:
        return b""
    if kind in "fO" and target.kind in "iu" and all(type(v) is int for v in _flat(name, data, object)):
        # integers beyond int64 (numpy made floats or objects of them): from Python ints numpy checks the range
        return _flat(name, data, target, dt.name).tobytes()
    if kind not in _KINDS[target.kind]:
        raise InvalidArgument(f"input '{name}' of datatype {dt.name} got {_kind_words(kind)} in 'data'")
    if target.kind in "iu":
        info = np.iinfo(target)
        if arr.min() < info.min or arr.max() > info.max:
            raise InvalidArgument(f"a value of input '{name}' in 'data' does not fit in {dt.name}")
    return arr.astype(target).tobytes()


def _flat(name: str, data: Any, dtype, datatype: str = "") -> np.ndarray:
    try:
        return np.asarray(data, dtype=dtype).reshape(-1)
    except OverflowError:
        raise InvalidArgument(f"a value of input '{name}' in 'data' does not fit in {datatype}") from None
    except (ValueError, TypeError):
        raise InvalidArgument(
            f"input '{name}' has 'data' that is not a regular (non-ragged) array of "
            f"{datatype or 'values'}") from None


def _kind_words(kind: str) -> str:
    return {"b": "booleans", "f": "numbers with a fraction or exponent", "U": "strings", "i": "integers",
            "u": "integers", "O": "mixed values"}.get(kind, "values of another type")


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounding to nearest even (NaN stays a quiet NaN)."""
    bits = values.astype("<f4").view("<u4")
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded).astype("<u2")


# -- outputs -> JSON / binary --------------------------------------------------------------------------------
def output_json(name: str, datatype: str, shape, payload, binary: bool, blobs: list) -> dict:
    """One output of the reply: ``payload`` is output_tensors()' buffer (BYTES already length-prefixed), or
    None for an output written into shared memory.
    Binary outputs append their buffer to ``blobs`` (sent after the JSON, in order)."""
    out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [int(d) for d in shape]}
    if payload is None:  # written into a shared-memory region: no contents in the reply, as Triton
        return out
    if binary:
        buf = payload if isinstance(payload, bytes) else payload.reshape(-1).view(np.uint8)  # C-contiguous
        out["parameters"] = {"binary_data_size": len(buf)}
        blobs.append(buf)
        return out
    count = math.prod(shape)
    if datatype == "BYTES":
        try:
            out["data"] = decode_bytes(payload, count, True).tolist()
        except BytesFormatError:
            raise InvalidArgument(
                f"output '{name}' holds bytes that are not UTF-8, which JSON cannot carry: request it with "
                "parameters.binary_data true") from None
    elif datatype == "BF16":
        out["data"] = (np.asarray(payload).reshape(-1).astype("<u4") << 16).view("<f4").tolist()
    else:
        out["data"] = np.asarray(payload).reshape(-1).tolist()
    return out


def infer_reply(req: RestInferRequest, model: str, version: str, outputs: list[tuple],
                parameters: dict[str, Any] | None = None) -> tuple[int | None, bytes]:
    """The reply body, and the JSON header's size when binary outputs follow it (else None: all JSON).
    ``outputs``: output_tensors()' (name, datatype, shape, payload) tuples; ``parameters``: the reply's own."""
    blobs: list = []
    doc: dict[str, Any] = {"model_name": model, "model_version": version}
    if req.id:
        doc["id"] = req.id
    if parameters:
        doc["parameters"] = parameters
    doc["outputs"] = [output_json(n, dt, shape, payload, req.binary_output(n), blobs)
                      for n, dt, shape, payload in outputs]
    header = dumps(doc)
    if not blobs:
        return None, header
    return len(header), b"".join([header, *blobs])


def dumps(doc: Any) -> bytes:
    """Compact JSON; NaN and infinities as ``NaN``/``Infinity`` (what rapidjson, tritonclient's parser, reads)."""
    return json.dumps(doc, separators=(",", ":")).encode()

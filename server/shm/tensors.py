"""A request's tensors and the shared-memory regions they name: inputs read from a region, outputs written
into one. The ``shared_memory_region`` / ``shared_memory_offset`` / ``shared_memory_byte_size`` parameters
as Triton reads them (src/grpc/grpc_utils.h ParseSharedMemoryParams), with its wording.

Inputs from regions join the request's raw buffers (``raw_input_contents`` holds only the other inputs, in
order, as in Triton), so decoding and every check stay decode.py's: a region's bytes become a numpy view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skewless.protos import grpc_service_pb2 as pb

from ..errors import InvalidArgument
from .regions import RegionTable

REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
_EXPECTED = {REGION: "string_param", OFFSET: "int64_param", BYTE_SIZE: "int64_param"}


def _value(params: Mapping[str, Any], key: str, tensor: str) -> Any:
    value = params[key]
    if isinstance(value, pb.InferParameter):
        which = value.WhichOneof("parameter_choice")
        value = getattr(value, which) if which is not None else None
        ok = which == _EXPECTED[key] or (key != REGION and which == "uint64_param")
    elif key == REGION:
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise InvalidArgument(f"invalid value type for '{key}' parameter for tensor '{tensor}', expected "
                              f"{_EXPECTED[key]}.")
    return value


def parse(params: Mapping[str, Any] | None, tensor: str) -> tuple[str, int, int] | None:
    """(region, offset, byte size) a tensor's parameters name, or None when it does not use shared memory."""
    if not params:
        return None
    if REGION not in params:
        for key in (OFFSET, BYTE_SIZE):
            if key in params:
                raise InvalidArgument(f"'{key}' can not be specified without '{REGION}' parameter for tensor "
                                      f"'{tensor}'")
        return None
    region = _value(params, REGION, tensor)
    offset = _value(params, OFFSET, tensor) if OFFSET in params else 0
    size = _value(params, BYTE_SIZE, tensor) if BYTE_SIZE in params else 0
    return region, offset, size


def uses_shared_memory(tensors: Sequence[Any]) -> bool:
    """Whether any input (or requested output) has parameters naming a region (cheap: the common request has
    no parameters at all)."""
    for t in tensors:
        params = getattr(t, "parameters", None)
        if params and (REGION in params or OFFSET in params or BYTE_SIZE in params):
            return True
    return False


def input_buffers(table: RegionTable, tensors: Sequence[Any], raw: Sequence[Any], model: str) -> list[Any]:
    """The raw buffer of every input, in order: a region's bytes for inputs in shared memory, the next entry
    of ``raw`` for the others (None when ``raw`` is exhausted: typed contents, or no data at all). More
    entries in ``raw`` than inputs outside shared memory is an error, as more entries than inputs is."""
    out: list[Any] = []
    rest = iter(raw)
    from_raw = 0
    for t in tensors:
        where = parse(t.parameters, t.name)
        if where is None:
            out.append(next(rest, None))
            from_raw += 1
            continue
        contents = getattr(t, "contents", None)
        if isinstance(t, pb.ModelInferRequest.InferInputTensor) and t.HasField("contents") and \
                contents.ListFields():
            raise InvalidArgument(f"unexpected 'content' provided when using shared memory for input tensor "
                                  f"'{t.name}' for model '{model}'")
        region, view = table.slice(*where)
        out.append(region.read(view) if region.read is not None else view)
    if len(raw) > from_raw:  # raw data for an input in shared memory too: which one was meant is unknowable
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries but {from_raw} of the request's {len(tensors)} inputs "
            "are not in shared memory: expected one entry per input not in shared memory, in the same order")
    return out


class OutputTarget:
    """Where one output goes: a slice of a region, written once the output is computed."""

    __slots__ = ("name", "region", "view")

    def __init__(self, name: str, region, view):
        self.name, self.region, self.view = name, region, view

    def write(self, payload: Any) -> None:
        """Copy ``payload`` (the output's bytes: an array or bytes, BYTES length-prefixed) into the region."""
        data = payload if isinstance(payload, bytes) else payload.reshape(-1).view(np.uint8)
        size, room = len(data), _size(self.view)
        if size > room:
            raise InvalidArgument(
                f"shared memory size specified with the request for output '{self.name}' ({room} bytes) should "
                f"be at least {size} bytes to hold the results")
        if self.region.write is not None:  # device memory (cuda.py)
            self.region.write(self.view, data)
        else:
            self.view[:size] = data


def _size(view) -> int:
    return view.nbytes if hasattr(view, "nbytes") else len(view)


def output_targets(table: RegionTable, outputs: Mapping[str, Mapping[str, Any]] | None
                   ) -> dict[str, OutputTarget] | None:
    """The requested outputs that go to shared memory, by name (None: none do). ``outputs``: each requested
    output's parameters (plain values or InferParameter messages)."""
    if not outputs:
        return None
    targets = {}
    for name, params in outputs.items():
        if params and "classification" in params and REGION in params:
            raise InvalidArgument("output can't set both 'shared_memory_region' and 'classification'")
        where = parse(params, name)
        if where is None:
            continue
        if _binary(params):
            raise InvalidArgument("Output can't set both 'shared_memory_region' and 'binary_data'")
        region, view = table.slice(*where)
        targets[name] = OutputTarget(name, region, view)
    return targets or None


def _binary(params: Mapping[str, Any]) -> bool:
    value = params.get("binary_data", False)
    if isinstance(value, pb.InferParameter):
        value = value.bool_param
    return value is True


def write_outputs(targets: dict[str, OutputTarget] | None, tensors: list[tuple]) -> list[tuple]:
    """output_tensors()' (name, datatype, shape, payload) with the outputs bound for shared memory written
    there; their payload becomes None (the reply carries no contents for them, as Triton's)."""
    if not targets:
        return tensors
    out = []
    for name, datatype, shape, payload in tensors:
        target = targets.get(name)
        if target is not None:
            target.write(payload)
            payload = None
        out.append((name, datatype, shape, payload))
    return out

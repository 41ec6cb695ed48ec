"""Triton's raw binary request (binary tensor extension, ``Inference-Header-Content-Length: 0``): the whole
body is the bytes of a single-input model's one input. Its datatype and shape come from the model config: the
one variable-sized dimension (if any) is deduced from the body size, else a batching model's batch dimension.
Errors use Triton's wording. Outputs are all returned, in binary.
"""

from __future__ import annotations

import struct

from ..decode import TensorHeader
from ..errors import InvalidArgument
from ..models.version import ModelVersion
from .rest_codec import RestInferRequest


def raw_binary_request(body: bytes, mv: ModelVersion) -> RestInferRequest:
    """The request a raw binary body stands for (the body stays one zero-copy buffer, except BYTES, which
    gets its 4-byte length prefix)."""
    if len(mv.inputs) != 1:
        raise InvalidArgument(
            f"Raw request must only have 1 input (found 1) to be deduced but got {len(mv.inputs)} inputs in "
            f"'{mv.name}' model configuration")
    spec = next(iter(mv.inputs.values()))
    batching = mv.max_batch_size > 0
    dims = list(spec.dims)
    wild = [i for i, d in enumerate(dims) if d == -1]
    if len(wild) > 1:
        raise InvalidArgument(f"The shape of the raw input '{spec.name}' can not be deduced because there are "
                              "more than one variable-sized dimension")
    if spec.datatype.name == "BYTES":
        fixed = 1
        for d in dims:
            fixed *= d
        if wild or fixed != 1:
            raise InvalidArgument(
                f"For BYTE datatype raw input '{spec.name}', the model must have input shape [1]")
        return _request(TensorHeader(spec.name, "BYTES", [1, *dims] if batching else dims),
                        struct.pack("<I", len(body)) + body)
    itemsize = spec.datatype.itemsize
    fixed = 1
    for d in dims:
        if d != -1:
            fixed *= d
    elements, rest = divmod(len(body), itemsize)
    if rest or (fixed and elements % fixed):
        raise InvalidArgument(
            f"the raw input '{spec.name}' of {len(body)} bytes is not a whole number of {spec.datatype.name} "
            f"elements of shape {_dims_text(dims)}")
    count = elements // fixed if fixed else 0
    if wild:  # Triton: batch 1, the one variable-sized dimension takes the rest
        dims[wild[0]] = count
        shape = [1, *dims] if batching else dims
    else:  # no variable-sized dimension: the batch dimension does
        shape = [count, *dims] if batching else dims
    return _request(TensorHeader(spec.name, spec.datatype.name, shape), memoryview(body))


def _request(header: TensorHeader, raw) -> RestInferRequest:
    req = RestInferRequest(inputs=[header], raw=[raw])
    req.parameters["binary_data_output"] = True
    return req


def _dims_text(dims: list[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"

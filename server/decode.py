"""Request decoding and validation: a request's inputs checked against the model and decoded into its feeds.

Every transport's requests pass here (protobuf messages, the native parser's views, REST's headers and raw
buffers), so each check and its message (Triton's wording) exists once. Requests the compiled plan
(native/v2_codec's DecodePlan) takes in one call skip it; anything else, or any error, comes here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from skewless.native.v2_codec import InputTensor, WireFormatError, parse_infer_request
from skewless.protos import grpc_service_pb2 as pb

from .codec import DATATYPES, decode_raw, decode_typed, element_count, format_shape
from .errors import InvalidArgument
from .features.missing import missing_raw
from .models.config import TensorSpec
from .models.version import ModelVersion


def parse_message(data: bytes):
    """A serialized ModelInferRequest parsed natively (views into ``data``, no protobuf objects)."""
    try:
        return parse_infer_request(data)
    except WireFormatError as exc:
        raise InvalidArgument(f"malformed ModelInferRequest: {exc}") from None


def request_feeds(mv: ModelVersion, tensors, raw, output_names: list[str], request_id: str,
                  admit: bool = True) -> tuple[dict[str, np.ndarray], int, list[str]]:
    """The general decoder: the model's feeds, the batch size and the outputs to compute. With ``admit`` a
    feature stage checks raw feature columns' row counts and tags them for the served-feature log."""
    feeds, rows = decode_inputs(tensors, raw, mv)
    if admit and mv.features is not None:
        feeds = mv.features.admit(feeds, request_id)
    return feeds, rows, requested_outputs(output_names, mv)


@dataclass(frozen=True, slots=True)
class TensorHeader:
    """An input as a transport other than gRPC describes it (its data travels separately, as a raw buffer)."""

    name: str
    datatype: str
    shape: Sequence[int]
    parameters: dict | None = None  # the input's own parameters (shared memory: server/shm/tensors.py)


def scheduling_parameters(params) -> tuple[int, int | None]:
    """Triton's ``priority`` (0 = the model's default level) and ``timeout`` (microseconds) parameters.

    ``params`` maps names to plain values (native parser) or to InferParameter messages (protobuf)."""
    values = []
    for key in ("priority", "timeout"):
        if key not in params:
            values.append(None)
            continue
        value = params[key]
        if isinstance(value, pb.InferParameter):
            which = value.WhichOneof("parameter_choice")
            value = getattr(value, which) if which in ("int64_param", "uint64_param") else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgument(f"request parameter '{key}' must be a non-negative integer (int64 or uint64)")
        values.append(int(value))
    return values[0] or 0, values[1]


def check_shape(name: str, spec: TensorSpec, shape: list[int], mv: ModelVersion) -> None:
    expected = [-1, *spec.dims] if mv.max_batch_size > 0 else list(spec.dims)
    if len(shape) != len(expected) or any(e != -1 and e != s for e, s in zip(expected, shape, strict=True)):
        raise InvalidArgument(
            f"unexpected shape for input '{name}' for model '{mv.name}'. Expected {format_shape(expected)}, "
            f"got {format_shape(shape)}"
        )


def typed_contents(tensor):
    """Typed contents of a protobuf input tensor, or None (native views and TensorHeaders never carry them)."""
    if isinstance(tensor, (InputTensor, TensorHeader)) or not tensor.HasField("contents"):
        return None
    return tensor.contents if tensor.contents.ListFields() else None


def events_feeds(mv: ModelVersion, tensors, raw) -> dict[str, np.ndarray]:
    """An ingest request's events (issue 29): any subset of a feature spec's raw inputs, checked and decoded as
    an inference request's are, with no bound on the rows (events are recorded, not run through the model)."""
    feeds, _ = decode_inputs(tensors, raw, mv, events=True)
    return feeds


def decode_inputs(tensors, raw, mv: ModelVersion, events: bool = False) -> tuple[dict[str, np.ndarray], int]:
    """Validate every input against the model and decode it; returns the feeds and the batch size.

    ``tensors`` are protobuf InferInputTensor messages, native InputTensor views or TensorHeaders (name,
    datatype, shape). ``raw``: one buffer per input, or none at all; an entry is None for an input whose data
    is elsewhere (typed contents), when inputs from shared memory made the list (server/shm/tensors.py).
    """
    if raw and len(raw) != len(tensors):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries but the request has {len(tensors)} inputs: "
            "expected one entry per input, in the same order"
        )
    feeds: dict[str, np.ndarray] = {}
    batch: int | None = None
    batching = mv.max_batch_size > 0
    for i, tensor in enumerate(tensors):
        name = tensor.name
        spec = mv.inputs.get(name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected inference input '{name}' for model '{mv.name}': expected inputs are {list(mv.inputs)}")
        if name in feeds:
            raise InvalidArgument(f"input '{name}' is given more than once for model '{mv.name}'")
        if tensor.datatype != spec.datatype.name:
            if tensor.datatype not in DATATYPES:
                raise InvalidArgument(f"unknown datatype '{tensor.datatype}' for inference input '{name}'")
            raise InvalidArgument(
                f"unexpected datatype {tensor.datatype} for inference input '{name}', expecting "
                f"{spec.datatype.name}")
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidArgument(f"input '{name}' has a negative dimension in shape {format_shape(shape)}")
        check_shape(name, spec, shape, mv)
        if batching:
            if not 1 <= shape[0] <= (mv.max_batch_size if not events else shape[0]):
                raise InvalidArgument(
                    f"inference request batch-size must be <= {mv.max_batch_size} for '{mv.name}' and >= 1, "
                    f"got {shape[0]} for input '{name}'")
            if batch is None:
                batch = shape[0]
            elif shape[0] != batch:
                raise InvalidArgument(
                    f"input '{name}' has batch size {shape[0]} but an earlier input has {batch}: "
                    "all inputs of a request must share the batch dimension")
        typed = typed_contents(tensor)
        buffer = raw[i] if raw else None
        if buffer is not None:
            if typed is not None:
                raise InvalidArgument(
                    f"input '{name}' has both raw_input_contents and typed contents: send exactly one of them")
            if mv.features is not None and spec.datatype.name == "BYTES":  # kept as wire bytes, no str objects
                arr = mv.features.bytes_payload(name, shape, buffer)
            else:
                arr = decode_raw(name, spec.datatype, shape, buffer)
        elif typed is not None or element_count(shape) == 0:
            arr = decode_typed(name, spec.datatype, shape, typed if typed is not None else pb.InferTensorContents())
        else:
            raise InvalidArgument(f"input '{name}' carries no data: expected raw_input_contents or typed contents")
        if spec.reshape is not None:
            arr = apply_reshape(arr, spec.reshape, batching, f"input '{name}'")
        feeds[name] = arr
    if events and not feeds:
        raise InvalidArgument(f"an events request for model '{mv.name}' needs inputs: the raw inputs of its "
                              f"aggregates' keys and times (and values), of {list(mv.inputs)}")
    if events:
        return feeds, batch if batch is not None else 1
    if len(feeds) != len(mv.inputs) and (mv.features is None or not feeds.keys() >= mv.features.raw_names):
        names = [t.name for t in tensors]
        missing = [n for n in mv.inputs if n not in feeds]
        expected = len(mv.inputs)
        if mv.features is not None:  # the NAME__missing companions are optional (features/missing.py)
            missing, expected = missing_raw(mv.features, feeds)
        raise InvalidArgument(
            f"expected {expected} inputs but got {len(tensors)} inputs for model '{mv.name}'. "
            f"Got input(s) {names}, but missing required input(s) {missing}. Please provide all required input(s).")
    return feeds, batch if batch is not None else 1


def apply_reshape(arr: np.ndarray, shape: tuple[int, ...], batching: bool, what: str) -> np.ndarray:
    """Triton's ``reshape``: clients see ``dims``, the model sees ``reshape`` (batch dimension kept)."""
    target = [arr.shape[0], *shape] if batching else list(shape)
    try:
        return arr.reshape(target)
    except ValueError:
        raise InvalidArgument(
            f"{what} of shape {format_shape(arr.shape)} cannot be reshaped to {format_shape(target)}") from None


def requested_outputs(names: list[str], mv: ModelVersion) -> list[str]:
    if not names:
        return mv.output_names
    out: list[str] = []
    for name in names:
        if name not in mv.outputs:
            raise InvalidArgument(
                f"unexpected inference output '{name}' for model '{mv.name}': expected outputs are "
                f"{mv.output_names}")
        if name in out:  # Triton's wording (its InferenceRequest::AddRequestedOutput)
            raise InvalidArgument(f"output '{name}' already exists in request")
        out.append(name)
    return out


def check_output_parameters(req: pb.ModelInferRequest) -> None:
    check_classification((o.name, o.parameters) for o in req.outputs)


def check_classification(outputs) -> None:
    """``outputs``: (name, parameters) pairs of the requested outputs."""
    for name, parameters in outputs:
        if "classification" in parameters:
            raise InvalidArgument(
                f"output '{name}' asks for classification, which skewless does not implement; "
                "request the raw output instead")

"""The external-data file locations an ONNX model names, read from its protobuf wire format.

A tensor stored outside the model file (``TensorProto.external_data``, key ``location``) is read by onnxruntime
relative to the model's folder; only recent onnxruntime releases refuse locations that leave it. An uploaded
model (a load's ``file:`` overrides) is checked with this walk instead, whatever the onnxruntime version, and
without the ``onnx`` package: only the messages that can hold a tensor are entered, every other field is
skipped by its length, and nothing is copied.
"""

from __future__ import annotations

# Field numbers of onnx.proto: for each message that can lead to a tensor, the fields holding such messages.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _FUNCTION, _TRAINING, _SPARSE, _TENSOR, _ENTRY = range(9)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},  # graph, training_info, functions
    _TRAINING: {1: _GRAPH, 2: _GRAPH},  # initialization, algorithm
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},  # node, initializer, sparse_initializer
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},  # node, attribute_proto (attribute defaults)
    _NODE: {5: _ATTRIBUTE},  # attribute
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},  # t g tensors graphs
    _SPARSE: {1: _TENSOR, 2: _TENSOR},  # values, indices
}
_TENSOR_EXTERNAL_DATA = 13  # repeated StringStringEntryProto (key = 1, value = 2)
_TENSOR_DATA_LOCATION = 14  # enum DataLocation: DEFAULT = 0, EXTERNAL = 1
_EXTERNAL = 1
_MAX_DEPTH = 100  # protobuf's own default recursion limit


class MalformedModel(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            break
    raise MalformedModel("a varint runs past its message or is too long")


def _fields(buf: memoryview, start: int, end: int):
    """(field number, wire type, value) of each field in ``buf[start:end]``: the varint for wire type 0, the
    (start, end) span for wire type 2, None for fixed-size fields."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise MalformedModel("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if size > end - pos:
                raise MalformedModel("a length-delimited field runs past its message")
            yield number, wire, (pos, pos + size)
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise MalformedModel("a fixed-size field runs past its message")
            yield number, wire, None
        else:  # groups (3, 4) are not used by onnx.proto; 6 and 7 do not exist
            raise MalformedModel(f"wire type {wire}")


def _text(buf: memoryview, span: tuple[int, int]) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedModel("a string that is not UTF-8") from None


def _tensor_locations(buf: memoryview, start: int, end: int) -> list[str]:
    locations: list[str] = []
    external = False
    for number, wire, value in _fields(buf, start, end):
        if number == _TENSOR_EXTERNAL_DATA and wire == 2:
            external = True
            key = text = None
            for n, w, v in _fields(buf, *value):
                if w == 2 and n in (1, 2):
                    if n == 1:
                        key = _text(buf, v)
                    else:
                        text = _text(buf, v)
            if key == "location":
                locations.append(text or "")
        elif number == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL:
            external = True
    if external and not locations:
        locations.append("")  # external data with no location: refused like an empty one
    return locations


def external_data_locations(model: bytes | memoryview) -> list[str]:
    """Every external-data ``location`` the ONNX model in ``model`` names (in any graph, subgraph, function,
    sparse tensor or attribute), in file order; an empty string for a tensor marked external without one.
    Raises ``MalformedModel`` when the bytes are not a well-formed protobuf message."""
    buf = memoryview(model).cast("B")
    found: list[str] = []
    stack = [(_MODEL, 0, len(buf), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if kind == _TENSOR:
            found.extend(_tensor_locations(buf, start, end))
            continue
        children = _CHILDREN[kind]
        nested = []
        for number, wire, value in _fields(buf, start, end):
            child = children.get(number)
            if child is None:
                continue
            if wire != 2:
                raise MalformedModel(f"field {number} holds a message but has wire type {wire}")
            if depth >= _MAX_DEPTH:
                raise MalformedModel(f"messages nested more than {_MAX_DEPTH} deep")
            nested.append((child, value[0], value[1], depth + 1))
        stack.extend(reversed(nested))  # depth first, in file order
    return found


__all__ = ["MalformedModel", "external_data_locations"]

"""What a feature model takes and returns, read once from ModelMetadata (gRPC or HTTP: the same JSON shape).

A feature-spec model lists its spec's *raw* inputs: one column each (shape ``[-1, 1]``), datatype FP64 / INT64
/ BOOL / BYTES (other numeric datatypes are accepted too, so a model served with a narrower config still works).
Each may have an optional companion ``NAME__missing`` (BOOL, same shape) that marks missing elements.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import NotAFeatureModel

MISSING_SUFFIX = "__missing"
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
INT_DATATYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
RAW_DATATYPES = FLOAT_DATATYPES | INT_DATATYPES | {"BOOL", "BYTES"}


@dataclass(frozen=True)
class RawInput:
    """One raw column of the model: ``shape`` is the metadata's, with -1 for the row count."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    companion: str | None  # the ``NAME__missing`` input when the model offers one, else None

    def wire_shape(self, rows: int) -> list[int]:
        return [rows, *self.shape[1:]]


@dataclass(frozen=True)
class OutputInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSchema:
    """A feature model's raw inputs (in metadata order) and outputs."""

    name: str
    versions: tuple[str, ...]
    inputs: tuple[RawInput, ...]
    outputs: tuple[OutputInfo, ...]
    max_batch_size: int = 0  # from ModelConfig: the default request size (0: no limit known)

    @classmethod
    def from_metadata(cls, doc: Mapping[str, Any], max_batch_size: int = 0) -> ModelSchema:
        """Parse a ModelMetadata reply as JSON (tritonclient's HTTP dict, or gRPC's ``as_json=True``).

        Raises NotAFeatureModel when an input is not a single raw column, naming it."""
        name = str(doc.get("name", ""))
        listed = [(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t.get("shape", ())))
                  for t in doc.get("inputs", ())]
        by_name = {n: (dt, shape) for n, dt, shape in listed}
        inputs = []
        for n, dt, shape in listed:
            if n.endswith(MISSING_SUFFIX) and n[: -len(MISSING_SUFFIX)] in by_name:
                continue  # a companion, attached to its column below
            if dt not in RAW_DATATYPES or not _is_column(shape):
                raise NotAFeatureModel(
                    f"model '{name}' is not a feature model: input '{n}' is {dt} {list(shape)}, while a feature "
                    "model takes one raw column per input (shape [-1, 1], datatype FP64, INT64, BOOL or BYTES)")
            companion = n + MISSING_SUFFIX
            inputs.append(RawInput(n, dt, shape, companion if companion in by_name else None))
        if not inputs:
            raise NotAFeatureModel(f"model '{name}' lists no inputs")
        outputs = tuple(OutputInfo(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t.get("shape", ())))
                        for t in doc.get("outputs", ()))
        return cls(name, tuple(str(v) for v in doc.get("versions", ())), tuple(inputs), outputs, max_batch_size)


def _is_column(shape: tuple[int, ...]) -> bool:
    """[-1] or [-1, 1, ...]: a variable row count and one element per row."""
    return len(shape) >= 1 and shape[0] == -1 and math.prod(shape[1:]) == 1

"""What ``FeatureClient.predict`` returns: the outputs of every request, concatenated in row order, and
which request served which rows (the ids the labels API joins on)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ClientError, require


@dataclass(frozen=True)
class Prediction:
    """``outputs``: one array per output, first axis = the table's rows. ``request_ids[i]`` served rows
    ``spans[i]`` (start, stop); ``feature_spec_hash`` is the spec the server computed the features with."""

    outputs: dict[str, np.ndarray]
    request_ids: list[str]
    spans: list[tuple[int, int]]
    model_version: str = ""
    feature_spec_hash: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.spans[-1][1] if self.spans else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    def labels(self, values: Any) -> dict[str, list[float]]:
        """Split one label per row of the table into the per-request lists the server joins by id."""
        y = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(y) != self.rows:
            raise ClientError(f"got {len(y)} labels for a prediction of {self.rows} rows")
        return {rid: y[a:b].tolist() for rid, (a, b) in zip(self.request_ids, self.spans, strict=True)}

    def to_table(self, kind: str = "auto") -> Any:
        """The outputs as a table: a pandas DataFrame (``kind="pandas"``, or "auto" when pandas is installed)
        or a pyarrow Table (``kind="arrow"``). An output with k values per row gives columns NAME_0..NAME_k-1."""
        columns = _flat_columns(self.outputs)
        if kind == "auto":
            try:
                import pandas  # noqa: F401
                kind = "pandas"
            except ImportError:
                kind = "arrow"
        if kind == "pandas":
            pd = require("pandas")
            return pd.DataFrame(columns)
        if kind == "arrow":
            pa = require("pyarrow")
            return pa.table({k: pa.array(v) for k, v in columns.items()})
        raise ValueError(f"kind must be 'auto', 'pandas' or 'arrow', got {kind!r}")


def _flat_columns(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {}
    for name, arr in outputs.items():
        flat = arr.reshape(len(arr), -1) if arr.ndim != 1 else arr[:, None]
        if flat.shape[1] == 1:
            cols[name] = flat[:, 0]
        else:
            for i in range(flat.shape[1]):
                cols[f"{name}_{i}"] = flat[:, i]
    return cols


def concat_outputs(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return {}
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

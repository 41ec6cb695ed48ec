"""An optional validation set beside a version: known inputs, expected outputs, a tolerance.

``validation.json`` in the version directory (so the manifest covers it)::

    {"atol": 1e-6, "rtol": 1e-5,
     "inputs":  {"x": {"shape": [2, 4], "data": [...]}},
     "outputs": {"y": {"shape": [2, 4], "data": [...]}}}

Inputs take the model's input datatypes (raw inputs for a model with features.json); data is row-major.
A version whose outputs differ beyond ``atol + rtol * |expected|`` anywhere is rejected before it serves:
it catches a model trained or exported wrong that still loads and warms up fine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from ..models.version import ModelVersion

VALIDATION_FILE = "validation.json"


class ValidationFailed(ModelLoadError):
    """The version's outputs on its validation set are not the expected ones."""


def _array(doc: dict, what: str, dtype: np.dtype) -> np.ndarray:
    try:
        return np.array(doc["data"], dtype=dtype).reshape(doc["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationFailed(f"{VALIDATION_FILE}: {what} needs 'shape' and matching 'data': {exc}") from None


def validate_version(mv: ModelVersion, version_dir: Path) -> None:
    """Run the version's validation set, if it has one; raise ValidationFailed when it fails. Blocking."""
    path = version_dir / VALIDATION_FILE
    if not path.is_file():
        return
    try:
        doc = json.loads(path.read_text())
        atol, rtol = float(doc.get("atol", 1e-6)), float(doc.get("rtol", 1e-5))
        inputs, outputs = doc["inputs"], doc["outputs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValidationFailed(f"{VALIDATION_FILE} is not a validation set: {exc}") from None
    feeds = {}
    for name, spec in inputs.items():
        if name not in mv.inputs:
            raise ValidationFailed(f"{VALIDATION_FILE} names unknown input '{name}'")
        dt = mv.inputs[name].datatype
        feeds[name] = _array(spec, f"input '{name}'", np.dtype(object) if dt.name == "BYTES" else dt.numpy)
    if mv.features is not None:
        feeds = mv.features.model_feeds(feeds)
    names = list(outputs)
    unknown = [n for n in names if n not in mv.outputs]
    if unknown:
        raise ValidationFailed(f"{VALIDATION_FILE} names unknown outputs {unknown}")
    got = mv.runtime.run_sync(names, feeds)
    for name, arr in zip(names, got, strict=True):
        want = _array(outputs[name], f"output '{name}'", np.dtype(np.float64))
        arr = np.asarray(arr, dtype=np.float64)
        if arr.shape != want.shape:
            raise ValidationFailed(f"validation failed: output '{name}' has shape {list(arr.shape)}, "
                                   f"expected {list(want.shape)}")
        if not np.allclose(arr, want, atol=atol, rtol=rtol, equal_nan=True):
            worst = float(np.nanmax(np.abs(arr - want)))
            raise ValidationFailed(f"validation failed: output '{name}' differs from {VALIDATION_FILE} by up "
                                   f"to {worst:.3g} (atol {atol:g}, rtol {rtol:g})")

"""Triton's ``model_warmup``: the sample inputs a version runs on every instance before it is ready."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from skewless.protos import model_config_pb2 as mc

from ..codec import BY_CONFIG_NAME, DataType
from ..errors import ModelLoadError
from .config import TensorSpec


def warmup_samples(config: mc.ModelConfig, inputs: dict[str, TensorSpec], version_dir: Path
                   ) -> Iterator[tuple[str, int, dict[str, np.ndarray]]]:
    """(sample name, times to run it, feeds) per warmup sample, in config order; bad samples fail the load."""
    rng = np.random.default_rng(0)
    for w in config.model_warmup:
        feeds: dict[str, np.ndarray] = {}
        for in_name, spec in w.inputs.items():
            if in_name not in inputs:
                raise ModelLoadError(f"warmup '{w.name}' names unknown input '{in_name}'")
            dt: DataType = BY_CONFIG_NAME[mc.DataType.Name(spec.data_type)]
            dims = list(spec.dims)
            if config.max_batch_size > 0:
                dims = [max(1, w.batch_size), *dims]
            if any(d < 0 for d in dims):
                raise ModelLoadError(f"warmup '{w.name}' input '{in_name}' needs fixed dims, got {dims}")
            feeds[in_name] = _warmup_tensor(spec, dt, dims, rng, version_dir, w.name, in_name)
        yield w.name, max(1, w.count), feeds


def _warmup_tensor(spec, dt: DataType, dims: list[int], rng, version_dir: Path, wname: str,
                   in_name: str) -> np.ndarray:
    count = int(np.prod(dims)) if dims else 1
    choice = spec.WhichOneof("input_data_type")
    if dt.name == "BYTES":
        values = [""] * count if choice == "zero_data" else [str(int(v)) for v in rng.integers(0, 100, count)]
        return np.array(values, dtype=object).reshape(dims)
    if choice == "zero_data":
        return np.zeros(dims, dtype=dt.numpy)
    if choice == "random_data":
        if dt.numpy.kind == "f":
            return rng.random(dims).astype(dt.numpy)
        if dt.numpy.kind == "b":
            return rng.integers(0, 2, dims).astype(bool)
        return rng.integers(0, 100, dims).astype(dt.numpy)
    if choice == "input_data_file":
        path = version_dir / "warmup" / spec.input_data_file
        raw = path.read_bytes()
        need = count * dt.itemsize
        if len(raw) < need:
            raise ModelLoadError(f"warmup '{wname}' file {path} has {len(raw)} bytes, needs {need}")
        return np.frombuffer(raw[:need], dtype=dt.numpy).reshape(dims)
    raise ModelLoadError(f"warmup '{wname}' input '{in_name}' sets no data (zero_data, random_data or file)")

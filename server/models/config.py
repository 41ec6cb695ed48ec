"""Model configuration: Triton's ``config.pbtxt`` parsed, auto-completed from the ONNX model, and checked.

Completion follows Triton's onnxruntime backend, so an existing Triton repository behaves the same here:
inputs and outputs come from the model when the config omits them, and a model whose every input and output
has a dynamic first dimension gets ``max_batch_size`` = the default (4, Triton's default) and dynamic batching.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format, text_format

from skewless.protos import model_config_pb2 as mc

from ..codec import BY_CONFIG_NAME, BY_ONNX, DataType
from ..errors import ModelLoadError
from ..json_depth import JsonTooDeep, check_json_depth

CONFIG_FILE = "config.pbtxt"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
DEFAULT_MAX_BATCH_SIZE = 4


@dataclass(frozen=True)
class TensorSpec:
    """A model tensor as clients see it: dims exclude the batch dimension when the model batches."""

    name: str
    datatype: DataType
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None  # the model's own non-batch shape, when it differs from dims


@dataclass(frozen=True)
class OnnxTensor:
    name: str
    onnx_type: str
    shape: tuple[int | str | None, ...]


def read_config_text(model_dir: Path) -> str | None:
    path = model_dir / CONFIG_FILE
    return path.read_text() if path.exists() else None


def parse_config(text: str, source: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelLoadError(f"failed to parse {source}: {exc}") from None
    return config


def parse_config_json(text: str, name: str) -> mc.ModelConfig:
    """A config override sent with RepositoryModelLoad (Triton's ``config`` parameter is JSON)."""
    config = mc.ModelConfig()
    try:
        check_json_depth(text.encode() if isinstance(text, str) else text)
        json_format.Parse(text, config)
    except (json_format.ParseError, JsonTooDeep) as exc:
        # Triton's prefix, which its clients look for
        raise ModelLoadError(f"failed to load '{name}': the 'config' load parameter is not a valid JSON "
                             f"ModelConfig: {exc}") from None
    return config


def mentions_max_batch_size(text: str | None) -> bool:
    """proto3 cannot tell an absent max_batch_size from 0; Triton completes it only when it is absent."""
    return bool(text) and re.search(r"(?m)^\s*max_batch_size\s*:", text) is not None


def json_mentions_max_batch_size(text: str) -> bool:
    """The same question for a JSON config override (already parsed once by ``parse_config_json``)."""
    doc = json.loads(text)
    return isinstance(doc, dict) and ("max_batch_size" in doc or "maxBatchSize" in doc)


def _dynamic(dim: int | str | None) -> bool:
    return not isinstance(dim, int) or dim < 0


def _dims(shape: tuple[int | str | None, ...]) -> list[int]:
    return [-1 if _dynamic(d) else int(d) for d in shape]


def complete_config(
    config: mc.ModelConfig,
    model_name: str,
    inputs: list[OnnxTensor],
    outputs: list[OnnxTensor],
    explicit_max_batch_size: bool,
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> mc.ModelConfig:
    """Return a completed copy of ``config`` checked against the ONNX model's tensors."""
    cfg = mc.ModelConfig()
    cfg.CopyFrom(config)
    if cfg.name and cfg.name != model_name:
        raise ModelLoadError(
            f"config name '{cfg.name}' does not match the model directory name '{model_name}'"
        )
    cfg.name = model_name
    if cfg.platform and cfg.platform != PLATFORM:
        raise ModelLoadError(f"unsupported platform '{cfg.platform}' for model '{model_name}': expected '{PLATFORM}'")
    if cfg.backend and cfg.backend != BACKEND:
        raise ModelLoadError(f"unsupported backend '{cfg.backend}' for model '{model_name}': expected '{BACKEND}'")
    cfg.platform, cfg.backend = PLATFORM, BACKEND

    for t in (*inputs, *outputs):
        if t.onnx_type not in BY_ONNX:
            raise ModelLoadError(f"tensor '{t.name}' of model '{model_name}' has unsupported type {t.onnx_type}")

    all_batchable = all(len(t.shape) >= 1 and _dynamic(t.shape[0]) for t in (*inputs, *outputs))
    if not explicit_max_batch_size and cfg.max_batch_size == 0 and all_batchable:
        cfg.max_batch_size = default_max_batch_size
        if not cfg.HasField("dynamic_batching") and not cfg.HasField("sequence_batching"):
            cfg.dynamic_batching.SetInParent()
    if cfg.max_batch_size < 0:
        raise ModelLoadError(f"max_batch_size of model '{model_name}' must be >= 0, got {cfg.max_batch_size}")
    batching = cfg.max_batch_size > 0

    _complete_tensors(cfg.input, inputs, model_name, batching, "input", require_all=True)
    _complete_tensors(cfg.output, outputs, model_name, batching, "output", require_all=False)

    if not cfg.HasField("version_policy"):
        cfg.version_policy.latest.num_versions = 1
    if not cfg.instance_group:
        group = cfg.instance_group.add()
        group.count = 1
        group.kind = mc.ModelInstanceGroup.KIND_AUTO
    for i, group in enumerate(cfg.instance_group):
        if not group.name:
            group.name = f"{model_name}_{i}"
        if group.count < 1:
            group.count = 1
    return cfg


def _complete_tensors(fields, model_tensors: list[OnnxTensor], model_name: str, batching: bool, what: str,
                      require_all: bool) -> None:
    by_name = {t.name: t for t in model_tensors}
    if len(fields) == 0:
        for t in model_tensors:
            f = fields.add()
            f.name = t.name
            f.data_type = mc.DataType.Value(BY_ONNX[t.onnx_type].config_name)
            dims = _dims(t.shape)
            dims = dims[1:] if batching else dims
            if batching and not dims:
                # As Triton's onnxruntime backend does: a batch-only tensor is [1] to clients, [] to the model.
                f.dims.append(1)
                f.reshape.SetInParent()
            else:
                f.dims.extend(dims)
        return
    seen = set()
    for f in fields:
        if f.name in seen:
            raise ModelLoadError(f"{what} '{f.name}' of model '{model_name}' is listed twice in the config")
        seen.add(f.name)
        t = by_name.get(f.name)
        if t is None:
            raise ModelLoadError(
                f"unexpected {what} '{f.name}' in the config of model '{model_name}': the ONNX model's "
                f"{what}s are {sorted(by_name)}"
            )
        model_type = BY_ONNX[t.onnx_type]
        if mc.DataType.Name(f.data_type) != model_type.config_name:
            raise ModelLoadError(
                f"unexpected datatype {mc.DataType.Name(f.data_type)} for {what} '{f.name}' of model "
                f"'{model_name}': the ONNX model has {model_type.config_name}"
            )
        model_dims = _dims(t.shape)
        if batching:
            if not model_dims or model_dims[0] != -1:
                raise ModelLoadError(
                    f"model '{model_name}' has max_batch_size > 0 but {what} '{f.name}' has no dynamic "
                    f"first dimension (shape {model_dims})"
                )
            model_dims = model_dims[1:]
        config_dims = list(f.reshape.shape) if f.HasField("reshape") else list(f.dims)
        if len(config_dims) != len(model_dims) or any(
            c != m and m != -1 and c != -1 for c, m in zip(config_dims, model_dims, strict=False)
        ):
            source = "reshape" if f.HasField("reshape") else "dims"
            raise ModelLoadError(
                f"{what} '{f.name}' of model '{model_name}' has {source} {config_dims} in the config but "
                f"{model_dims} in the ONNX model{' (batch dimension excluded)' if batching else ''}"
            )
    if require_all:
        missing = sorted(set(by_name) - seen)
        if missing:
            raise ModelLoadError(f"the config of model '{model_name}' lacks the model's {what}s {missing}")


def tensor_specs(fields) -> dict[str, TensorSpec]:
    return {
        f.name: TensorSpec(f.name, BY_CONFIG_NAME[mc.DataType.Name(f.data_type)], tuple(int(d) for d in f.dims),
                           tuple(int(d) for d in f.reshape.shape) if f.HasField("reshape") else None)
        for f in fields
    }

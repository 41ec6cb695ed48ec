"""Missing values on the wire for feature-spec models (issue 24's agreed design).

Each raw input ``NAME`` has an optional companion input ``NAME__missing`` (BOOL, NAME's shape; true = the
element is missing and its value is ignored), listed in ModelConfig with ``optional: true`` and hence in
ModelMetadata. REST JSON may instead put ``null`` in ``data``; the REST parser turns that into the companion,
so the data plane sees one form. At batch time the companions of the batch's requests become the kernel's
validity masks, merged as the values are merged, and offline ``transform`` reads Arrow nulls through the same
masks: a row with missing elements is served bit for bit as ``skewless transform`` computes it.

Nothing here runs for a request that sends no companion: the feature stage checks one length per request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skewless.protos import model_config_pb2 as mc

from ..errors import InvalidArgument, ModelLoadError

SUFFIX = "__missing"
# The value a JSON null is replaced by before encoding (ignored by the kernel: the companion marks it missing)
_FILL = {"BYTES": "", "BOOL": False}


def companion(name: str) -> str:
    """The companion input that marks the missing elements of raw input ``name``."""
    return name + SUFFIX


def check_raw_names(names: Sequence[str], where: str) -> None:
    """A raw input named ``X__missing`` would collide with the companion of ``X``: refuse the spec."""
    bad = [n for n in names if n.endswith(SUFFIX)]
    if bad:
        raise ModelLoadError(f"{where}: raw input name(s) {bad} end with '{SUFFIX}', which is reserved for the "
                             "inputs that mark missing values; rename them in the feature config")


def drop_listed(cfg: mc.ModelConfig, raw: Sequence[str], where: str) -> None:
    """An explicit config lists the raw inputs; the server adds the companions. A config that lists them too
    (e.g. ModelConfig as the server reported it, sent back with a load) has them dropped here, in place,
    after checking that each is what the server would add (optional BOOL)."""
    names = set(raw)
    listed = [i for i, f in enumerate(cfg.input) if f.name.endswith(SUFFIX) and f.name[: -len(SUFFIX)] in names]
    for i in reversed(listed):
        f = cfg.input[i]
        if f.data_type != mc.TYPE_BOOL or not f.optional:
            raise ModelLoadError(f"{where}: config input '{f.name}' marks the missing values of '{f.name[:-len(SUFFIX)]}'"
                                 f" and is added by the server as an optional TYPE_BOOL input; leave it out of the "
                                 "config")
        del cfg.input[i]


def add_companions(cfg: mc.ModelConfig, raw_names: Sequence[str]) -> dict[str, str]:
    """Append ``NAME__missing`` (TYPE_BOOL, NAME's dims, optional) after the completed raw inputs.

    Returns companion name -> raw input name."""
    by_name = {f.name: f for f in cfg.input}
    added: dict[str, str] = {}
    for name in raw_names:
        raw = by_name[name]
        f = cfg.input.add()
        f.name = companion(name)
        f.data_type = mc.TYPE_BOOL
        f.dims.extend(raw.dims)
        f.optional = True
        added[f.name] = name
    return added


def check_companions(feeds: Mapping[str, np.ndarray], companions: Mapping[str, str], rows_of) -> dict:
    """A request's companions: each must match its input's row count. Returns raw name -> bool mask (1-D)."""
    masks = {}
    for comp, raw in companions.items():
        mask = feeds.get(comp)
        if mask is None:
            continue
        n, want = mask.shape[0] if mask.ndim else 1, rows_of(feeds[raw])
        if mask.size != n or n != want:
            raise InvalidArgument(f"input '{comp}' has shape {list(mask.shape)} but input '{raw}' has {want} "
                                  f"row(s): '{comp}' marks the missing elements of '{raw}', so it needs the same "
                                  "shape")
        masks[raw] = mask.reshape(-1)
    return masks


def batch_missing(name: str, masks: Sequence[Mapping[str, np.ndarray] | None], counts: Sequence[int]
                  ) -> np.ndarray | None:
    """The batch's missing mask of one raw input (requests without a companion for it: none missing), or
    None when no request of the batch marks it. One memcpy-like slice assignment per marking request."""
    if not any(m is not None and name in m for m in masks):
        return None
    out = np.zeros(sum(counts), dtype=np.bool_)
    start = 0
    for m, n in zip(masks, counts, strict=True):
        if m is not None:
            part = m.get(name)
            if part is not None:
                out[start:start + n] = part
        start += n
    return out


def with_missing(column: Any, missing: np.ndarray | None) -> Any:
    """A merged raw column (1-D values, or the strings' ``(offsets, data[, valid])``) with ``missing`` folded
    into the validity mask the kernel reads: ``(values, valid)`` or ``(offsets, data, valid)``."""
    if missing is None:
        return column
    valid = ~missing
    if isinstance(column, tuple):
        if len(column) > 2 and column[2] is not None:
            valid &= np.asarray(column[2], dtype=np.bool_)
        return (column[0], column[1], valid)
    return (column, valid)


# -- REST JSON null ----------------------------------------------------------------------------------------
def has_null(data: Any) -> bool:
    """Whether JSON ``data`` (flat or nested lists) holds a null; only asked once encoding it failed."""
    if data is None:
        return True
    if isinstance(data, list):
        return any(has_null(v) for v in data) if data and isinstance(data[0], list) else None in data
    return False


def split_json_nulls(datatype: str, data: Any) -> tuple[list, np.ndarray]:
    """JSON ``data`` with nulls -> (flat values with each null replaced by a placeholder, missing mask)."""
    try:
        flat = np.asarray(data if isinstance(data, list) else [data], dtype=object).reshape(-1)
    except ValueError:  # ragged: let the regular encoder word the error
        return data, np.zeros(0, dtype=np.bool_)
    mask = np.asarray(flat == None, dtype=np.bool_)  # noqa: E711 (elementwise comparison)
    flat[mask] = _FILL.get(datatype, 0)
    return flat.tolist(), mask


def refuse_nulls(names: Sequence[str], model: str, has_spec: bool) -> None:
    """JSON nulls reach a model only through a feature spec: a plain tensor has no missing value."""
    if names and not has_spec:
        raise InvalidArgument(f"input '{names[0]}' has null in 'data', but model '{model}' has no feature spec: "
                              "its inputs are tensors, which cannot hold a missing value")


def missing_raw(stage: Any, feeds: Mapping[str, Any]) -> tuple[list[str], str]:
    """For the data plane's error: the raw inputs a request lacks, and how many inputs it may have."""
    raw = [n for n in stage.spec.input_names if n not in feeds]
    return raw, f"between {len(stage.raw_names)} and {2 * len(stage.raw_names)}"

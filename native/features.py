"""Public API of the feature core: fit a config into a frozen spec, load it, transform with the kernel.

    from skewless.native import features
    spec = features.fit("features.yaml", train_df)      # or features.load("features.json")
    spec.save("features.json")
    tensors = spec.transform(batch)                      # {"dense": float32 (n, d), "ids": int64 (n, k)}
    spec.transform_into(columns, preallocated, n_threads=1)   # the batcher's zero-allocation path

Offline training and online serving call the same compiled kernel (``feature_kernel``), so the served
tensor is byte-equal to the training matrix; see DESIGN.md, "Bit for bit".
"""

from __future__ import annotations

import os

from .feature_kernel import BUILD_INFO, FeatureInputError, log1p, murmurhash3_32
from .fit import ConfigError, fit, load_config
from .spec import FeatureSpec, SpecError, TensorInfo


def load(path: str | os.PathLike[str], *, verify_hash: bool = True) -> FeatureSpec:
    """Load and validate a ``features.json`` (the content hash is checked unless told otherwise)."""
    return FeatureSpec.load(path, verify_hash=verify_hash)


def skew_check(spec: FeatureSpec, log: str | os.PathLike[str], **kwargs):  # noqa: ANN201
    """Recompute a served-feature log and report mismatches (see ``skewless.native.skew``; needs pyarrow)."""
    from .skew import skew_check as check

    return check(spec, log, **kwargs)


__all__ = [
    "BUILD_INFO", "ConfigError", "FeatureInputError", "FeatureSpec", "SpecError", "TensorInfo",
    "fit", "load", "load_config", "log1p", "murmurhash3_32", "skew_check",
]

"""model_warmup runs on every instance before a version is ready, and a failing warmup fails the load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skewless.examples.generate import build_test_models
from skewless.server.errors import ModelLoadError
from skewless.server.models.config import parse_config
from skewless.server.models.version import ModelVersion

ADD_SUB = """
name: "add_sub"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [16] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [16] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [16] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [16] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""


@pytest.fixture(scope="module")
def add_sub_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("warmup")
    build_test_models(root)
    return root / "add_sub" / "1"


def load(version_dir: Path, warmup: str) -> ModelVersion:
    return ModelVersion("add_sub", 1, version_dir, parse_config(ADD_SUB + warmup, "test"), True, 4)


def test_zero_random_and_file_warmups_load(add_sub_dir):
    (add_sub_dir / "warmup").mkdir(exist_ok=True)
    np.arange(32, dtype="<f4").tofile(add_sub_dir / "warmup" / "in0.bin")
    mv = load(add_sub_dir, """
        model_warmup [ {
          name: "mixed" batch_size: 2 count: 3
          inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [16] input_data_file: "in0.bin" } }
          inputs { key: "INPUT1" value: { data_type: TYPE_FP32 dims: [16] random_data: true } }
        }, {
          name: "zeros" batch_size: 1
          inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [16] zero_data: true } }
          inputs { key: "INPUT1" value: { data_type: TYPE_FP32 dims: [16] zero_data: true } }
        } ]""")
    assert len(mv.runtime.instances) == 2
    assert mv.stats.execution_count == 0  # warmup is not traffic
    mv.runtime.close()


def test_warmup_that_cannot_run_fails_the_load(add_sub_dir):
    with pytest.raises(ModelLoadError, match="warmup of model 'add_sub' version 1 failed"):
        load(add_sub_dir, """
            model_warmup [ { name: "bad" batch_size: 1
              inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [5] zero_data: true } }
              inputs { key: "INPUT1" value: { data_type: TYPE_FP32 dims: [5] zero_data: true } } } ]""")


def test_warmup_file_too_short_or_unknown_input_fails_the_load(add_sub_dir):
    (add_sub_dir / "warmup").mkdir(exist_ok=True)
    (add_sub_dir / "warmup" / "short.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ModelLoadError, match="short.bin has 8 bytes, needs 64"):
        load(add_sub_dir, """
            model_warmup [ { name: "short" batch_size: 1
              inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [16] input_data_file: "short.bin" } }
              inputs { key: "INPUT1" value: { data_type: TYPE_FP32 dims: [16] zero_data: true } } } ]""")
    with pytest.raises(ModelLoadError, match="unknown input 'NOPE'"):
        load(add_sub_dir, """
            model_warmup [ { name: "typo" batch_size: 1
              inputs { key: "NOPE" value: { data_type: TYPE_FP32 dims: [16] zero_data: true } } } ]""")

"""Device placement, CUDA provider options and the IO-binding path, on the CPU.

The IOBinding code (server/models/iobinding.py) is the same for both devices; here it runs with the CPU
execution provider (``skewless.io_binding: "1"``), so everything but the CUDA copies themselves is tested on
machines without a GPU. tests/test_gpu.py runs the CUDA side where a GPU is present.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from skewless.examples.generate import _add_sub_model, _config_text, _Tensor
from skewless.protos import model_config_pb2 as mc
from skewless.server.errors import ModelLoadError
from skewless.server.models import runtime
from skewless.server.models.config import parse_config
from skewless.server.models.iobinding import BoundRunner, HostStaging, PinnedAllocator, numpy_allocator
from skewless.server.models.version import ModelVersion

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "models"
no_cuda = pytest.mark.skipif(runtime.cuda_available(), reason="checks behaviour without a CUDA provider")


def _params(**params: str) -> str:
    return "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items())


def _version(tmp_path: Path, name: str, params: dict[str, str], subdir: str = "") -> ModelVersion:
    """A copy of an example model with extra config parameters, loaded as the repository would."""
    root = tmp_path / (subdir or "-".join(f"{k}={v}" for k, v in params.items()) or "plain")
    shutil.copytree(EXAMPLES / name, root / name)
    cfg_path = root / name / "config.pbtxt"
    text = cfg_path.read_text() if cfg_path.exists() else f'name: "{name}"\n'
    return ModelVersion(name, 1, root / name / "1", parse_config(text + _params(**params), name), True, 4)


def _config(text: str) -> mc.ModelConfig:
    return parse_config(f'name: "m"\n{text}', "m")


# -- placement and provider options ---------------------------------------------------------------------------
@no_cuda
def test_kind_auto_falls_back_to_cpu_and_kind_gpu_refuses_without_cuda():
    assert runtime.placements(_config("instance_group [ { kind: KIND_AUTO count: 2 } ]")) == [
        runtime.Placement("KIND_CPU", 0)] * 2
    with pytest.raises(ModelLoadError, match="KIND_GPU .*'gpu' extra"):
        runtime.placements(_config("instance_group [ { kind: KIND_GPU count: 1 } ]"))


def test_kind_gpu_makes_count_instances_on_each_listed_gpu(monkeypatch):
    # CUDA itself cannot run here: only the answer to "is there a CUDA provider" is stood in for.
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    monkeypatch.setattr(runtime, "cuda_usable", lambda: True)
    cfg = _config("instance_group [ { kind: KIND_GPU count: 2 gpus: [ 0, 3 ] }, { kind: KIND_CPU count: 1 } ]")
    assert runtime.placements(cfg) == [runtime.Placement("KIND_GPU", 0)] * 2 + [
        runtime.Placement("KIND_GPU", 3)] * 2 + [runtime.Placement("KIND_CPU", 0)]
    assert runtime.placements(_config("instance_group [ { kind: KIND_AUTO count: 1 } ]")) == [
        runtime.Placement("KIND_GPU", 0)]
    assert runtime.placements(_config("instance_group [ { kind: KIND_GPU count: 1 } ]")) == [
        runtime.Placement("KIND_GPU", 0)]


def test_kind_auto_needs_a_device_not_just_a_provider_built_in(monkeypatch):
    """The GPU wheel on a machine without a GPU lists CUDA anyway: KIND_AUTO must still choose the CPU."""
    from skewless.server.models.iobinding import cuda_device_count

    if cuda_device_count() > 0:
        pytest.skip("a GPU is usable here")
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)  # what onnxruntime-gpu reports here
    assert not runtime.cuda_usable()
    assert runtime.placements(_config("instance_group [ { kind: KIND_AUTO count: 1 } ]")) == [
        runtime.Placement("KIND_CPU", 0)]


def test_cuda_provider_options_keep_tf32_off_unless_asked():
    assert runtime.cuda_provider_options(_config(""), 2) == {"device_id": "2", "use_tf32": "0"}
    cfg = _config(_params(cuda_use_tf32="1", cuda_gpu_mem_limit="1073741824", cuda_arena_extend_strategy="kSameAsRequested"))
    assert runtime.cuda_provider_options(cfg, 0) == {
        "device_id": "0", "use_tf32": "1", "gpu_mem_limit": "1073741824", "arena_extend_strategy": "kSameAsRequested"}


# -- IO binding on the CPU execution provider ------------------------------------------------------------------
def test_io_binding_is_off_by_default_on_cpu_and_validated(tmp_path):
    plain = _version(tmp_path, "mlp", {})
    assert all(inst.bound is None for inst in plain.runtime.instances)
    plain.runtime.close()
    for key, bad in ((runtime.IO_BINDING, "yes"), (runtime.PINNED_STAGING, "2")):
        with pytest.raises(ModelLoadError, match=key):
            _version(tmp_path, "mlp", {key: bad})


def test_bound_mlp_matches_plain_run_bit_for_bit(tmp_path):
    plain = _version(tmp_path, "mlp", {})
    bound = _version(tmp_path, "mlp", {runtime.IO_BINDING: "1"})
    assert isinstance(bound.runtime.instances[0].bound, BoundRunner)
    assert bound.runtime.instances[0].bound.device == "cpu"
    rng = np.random.default_rng(7)
    try:
        for rows in (1, 7, 64, 256, 3):
            x = rng.standard_normal((rows, 32), dtype=np.float32)
            (want,) = plain.runtime.run_sync(["probabilities"], {"input": x})
            (got,) = bound.runtime.run_sync(["probabilities"], {"input": x})
            assert got.shape == (rows, 2) and got.dtype == np.float32
            np.testing.assert_array_equal(got, want)

        async def through_scheduler():
            x = rng.standard_normal((16, 32), dtype=np.float32)
            outs, _ = await bound.scheduler.infer({"input": x}, ["probabilities"], 16)
            return x, outs[0]

        x, got = asyncio.run(through_scheduler())
        np.testing.assert_array_equal(got, plain.runtime.run_sync(["probabilities"], {"input": x})[0])
    finally:
        plain.runtime.close()
        bound.runtime.close()


def test_bound_outputs_follow_the_requested_order(tmp_path):
    from onnx import save

    vdir = tmp_path / "add_sub" / "1"
    vdir.mkdir(parents=True)
    save(_add_sub_model(), str(vdir / "model.onnx"))
    text = _config_text("add_sub", 8, [_Tensor("INPUT0", "FP32", [16]), _Tensor("INPUT1", "FP32", [16])],
                        [_Tensor("OUTPUT0", "FP32", [16]), _Tensor("OUTPUT1", "FP32", [16])])
    version = ModelVersion("add_sub", 1, vdir, parse_config(text + _params(**{runtime.IO_BINDING: "1"}), "add_sub"),
                           True, 4)
    try:
        a = np.arange(32, dtype=np.float32).reshape(2, 16)
        b = np.full((2, 16), 0.5, dtype=np.float32)
        diff, total = version.runtime.run_sync(["OUTPUT1", "OUTPUT0"], {"INPUT0": a, "INPUT1": b})
        np.testing.assert_array_equal(total, a + b)
        np.testing.assert_array_equal(diff, a - b)
        (only,) = version.runtime.run_sync(["OUTPUT1"], {"INPUT0": a, "INPUT1": b})
        np.testing.assert_array_equal(only, a - b)
    finally:
        version.runtime.close()


def test_string_models_run_without_binding_even_when_asked(tmp_path):
    version = _version(tmp_path, "text", {runtime.IO_BINDING: "1"})
    try:
        assert version.runtime.instances[0].bound is None
    finally:
        version.runtime.close()


def test_pinned_staging_is_for_gpu_instances_only(tmp_path):
    version = _version(tmp_path, "mlp", {runtime.IO_BINDING: "1", runtime.PINNED_STAGING: "1"})
    try:
        bound = version.runtime.instances[0].bound
        assert bound is not None and bound.staging is None
    finally:
        version.runtime.close()


# -- staging buffers ----------------------------------------------------------------------------------------
def test_staging_copies_keeps_dtype_and_reuses_its_buffers():
    released = []

    def counting_allocator(nbytes: int):
        arr, _ = numpy_allocator(nbytes)
        return arr, lambda: released.append(nbytes)

    staging = HostStaging(counting_allocator)
    small = np.arange(12, dtype=np.int64).reshape(3, 4)
    view = staging.stage("ids", small)
    assert view.dtype == np.int64 and view.shape == (3, 4)
    np.testing.assert_array_equal(view, small)
    assert staging.capacity("ids") == 4096  # a floor, so 1-row batches do not reallocate as they grow
    big = np.ones((1000, 4), dtype=np.int64)  # 32000 bytes: grows
    np.testing.assert_array_equal(staging.stage("ids", big), big)
    grown = staging.capacity("ids")
    assert grown >= big.nbytes and released == [4096]
    np.testing.assert_array_equal(staging.stage("ids", small), small)
    assert staging.capacity("ids") == grown  # smaller batches reuse the grown buffer
    staging.close()
    assert released == [4096, grown]


def test_bound_runner_with_staging_matches_plain_run():
    import onnxruntime as ort

    sess = ort.InferenceSession(str(EXAMPLES / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    runner = BoundRunner(sess, "cpu", 0, HostStaging())
    rng = np.random.default_rng(3)
    for rows in (4, 100, 2):
        x = rng.standard_normal((rows, 32), dtype=np.float32)
        np.testing.assert_array_equal(runner.run(["probabilities"], {"input": x})[0],
                                      sess.run(["probabilities"], {"input": x})[0])
    runner.close()


def test_pinned_allocator_says_what_is_missing_without_the_cuda_runtime():
    try:
        allocator = PinnedAllocator()
    except ModelLoadError as exc:
        assert "CUDA runtime" in str(exc)
        return
    # A CUDA runtime is installed: page-locked memory must then work (it needs a driver, not a kernel launch).
    try:
        buf, release = allocator(1 << 16)
    except MemoryError:
        pytest.skip("libcudart loads but no CUDA device/driver is usable")
    buf[:] = 7
    assert int(buf.sum()) == 7 * (1 << 16)
    release()

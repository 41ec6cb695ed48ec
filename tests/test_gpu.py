"""The CUDA execution provider path: runs only where onnxruntime-gpu and an NVIDIA GPU are present."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from skewless.server.models.config import parse_config
from skewless.server.models.runtime import CUDA, cuda_usable
from skewless.server.models.version import ModelVersion

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "examples" / "models" / "mlp"

pytestmark = pytest.mark.gpu


def _gpu_present() -> bool:
    """onnxruntime-gpu lists CUDA on any machine: also ask the CUDA runtime for a device."""
    return cuda_usable()


requires_gpu = pytest.mark.skipif(not _gpu_present(), reason="needs onnxruntime-gpu and an NVIDIA GPU")


def _mlp_version(tmp_path: Path, kind: str, params: dict[str, str] | None = None) -> ModelVersion:
    vdir = tmp_path / f"{kind}-{len(list(tmp_path.iterdir()))}" / "mlp" / "1"
    vdir.mkdir(parents=True)
    shutil.copy(MLP / "1" / "model.onnx", vdir / "model.onnx")
    text = (MLP / "config.pbtxt").read_text().replace("KIND_CPU", kind)
    text += "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in (params or {}).items())
    return ModelVersion("mlp", 1, vdir, parse_config(text, "mlp"), True, 4)


@requires_gpu
@pytest.mark.parametrize("kind", ["KIND_GPU", "KIND_AUTO"])
def test_gpu_instance_runs_on_cuda_and_matches_cpu(tmp_path, kind):
    gpu = _mlp_version(tmp_path, kind)
    cpu = _mlp_version(tmp_path, "KIND_CPU")
    assert gpu.runtime.providers[0] == CUDA
    assert cpu.runtime.providers[0] != CUDA
    x = np.random.default_rng(0).random((64, 32), dtype=np.float32)

    async def both():
        g = await gpu.scheduler.infer({"input": x}, ["probabilities"], 64)
        c = await cpu.scheduler.infer({"input": x}, ["probabilities"], 64)
        return g[0][0], c[0][0]

    g, c = asyncio.run(both())
    np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-5)
    gpu.runtime.close()
    cpu.runtime.close()


@requires_gpu
def test_gpu_instance_group_on_a_missing_device_fails_to_load(tmp_path):
    from skewless.server.errors import ModelLoadError

    vdir = tmp_path / "mlp" / "1"
    vdir.mkdir(parents=True)
    shutil.copy(MLP / "1" / "model.onnx", vdir / "model.onnx")
    text = (MLP / "config.pbtxt").read_text().replace("kind: KIND_CPU", "kind: KIND_GPU gpus: [ 97 ]")
    with pytest.raises(ModelLoadError):
        ModelVersion("mlp", 1, vdir, parse_config(text, "mlp"), True, 4)


@requires_gpu
def test_server_serves_a_kind_gpu_model_over_grpc(tmp_path):
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient
    from serverproc import ServerProcess

    repo = tmp_path / "repo"
    shutil.copytree(MLP, repo / "mlp")
    cfg = repo / "mlp" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("KIND_CPU", "KIND_GPU"))
    server = ServerProcess(repo).start()
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        x = np.random.default_rng(1).random((16, 32), dtype=np.float32)
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer("mlp", [inp]).as_numpy("probabilities")
        ref = ort.InferenceSession(str(MLP / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(got, ref.run(None, {"input": x})[0], rtol=1e-4, atol=1e-5)
        assert client.get_model_config("mlp").config.instance_group[0].kind == 1  # KIND_GPU
    finally:
        server.stop()


@requires_gpu
@pytest.mark.parametrize("params", [{"skewless.io_binding": "0"}, {}, {"skewless.cuda_pinned_staging": "1"}],
                         ids=["session_run", "io_binding", "io_binding_pinned"])
def test_each_gpu_run_path_matches_cpu(tmp_path, params):
    gpu = _mlp_version(tmp_path, "KIND_GPU", params)
    cpu = _mlp_version(tmp_path, "KIND_CPU")
    try:
        inst = gpu.runtime.instances[0]
        assert inst.providers[0] == CUDA
        assert (inst.bound is None) == (params.get("skewless.io_binding") == "0")
        if "skewless.cuda_pinned_staging" in params:
            assert inst.bound.staging is not None
        rng = np.random.default_rng(5)
        for rows in (1, 64, 256, 3):  # growing then shrinking batches: staging buffers grow and are reused
            x = rng.random((rows, 32), dtype=np.float32)
            (g,) = gpu.runtime.run_sync(["probabilities"], {"input": x})
            (c,) = cpu.runtime.run_sync(["probabilities"], {"input": x})
            np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-5)
    finally:
        gpu.runtime.close()
        cpu.runtime.close()

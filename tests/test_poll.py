"""Poll mode: new models load, changed models reload only once their files stop changing, removed models
unload, and a failed reload leaves the serving version alone."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from helpers import expect_error, index_rows, infer, mlp_variant_model, wait_until

POLL_SECS = 0.5
TIMEOUT = 15.0


def served_versions(c, name: str) -> list[str]:
    try:
        return list(c.get_model_metadata(name).versions)
    except Exception:
        return []


@pytest.mark.slow
def test_poll_mode(start_server, make_repo, model_source):
    repo = make_repo("mlp")
    srv = start_server(repo, "--model-control-mode", "poll", "--repository-poll-secs", str(POLL_SECS))
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        x = np.random.default_rng(9).standard_normal((3, 32)).astype(np.float32)
        v1_out = infer(c, "mlp", {"input": x}).as_numpy("probabilities")
        expect_error(lambda: c.load_model("mlp"), "FAILED_PRECONDITION", "--model-control-mode poll")

        # A new model directory is picked up.
        shutil.copytree(model_source / "add_sub", repo / "add_sub")
        wait_until(lambda: c.is_model_ready("add_sub"), TIMEOUT, "add_sub to load")
        a = np.ones((1, 16), np.float32)
        np.testing.assert_array_equal(infer(c, "add_sub", {"INPUT0": a, "INPUT1": a}).as_numpy("OUTPUT0"), a + a)

        # A new version copied slowly (a chunk every 0.1 s for ~2 s, four poll intervals, by a writer thread so
        # that the pace holds on a busy machine): never loaded half-written, version 1 serves throughout, and
        # version 2 serves once the copy is complete.
        v2 = mlp_variant_model(seed=21)
        chunks = 20
        size = -(-len(v2) // chunks)
        (repo / "mlp" / "2").mkdir()

        def copy_slowly() -> None:
            with open(repo / "mlp" / "2" / "model.onnx", "wb") as f:
                for i in range(chunks):
                    f.write(v2[i * size:(i + 1) * size])
                    f.flush()
                    time.sleep(0.1)

        writer = threading.Thread(target=copy_slowly)
        writer.start()
        checks = 0
        while writer.is_alive() or checks == 0:
            res = infer(c, "mlp", {"input": x})
            assert res.get_response().model_version == "1", "switched to a half-written version"
            np.testing.assert_array_equal(res.as_numpy("probabilities"), v1_out)
            assert ("mlp", "2") not in index_rows(c, "mlp")
            checks += 1
            time.sleep(0.05)
        writer.join()
        wait_until(lambda: served_versions(c, "mlp") == ["2"], TIMEOUT, "mlp version 2 to serve")
        want = ort.InferenceSession(v2, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        res = infer(c, "mlp", {"input": x})
        assert res.get_response().model_version == "2"
        np.testing.assert_allclose(res.as_numpy("probabilities"), want, rtol=1e-6, atol=1e-7)
        log = srv.stderr_text()
        assert "failed to load" not in log, log  # no load was ever tried on a partial file

        # A broken version 3: its load fails once (not retried every poll), version 2 keeps serving.
        (repo / "mlp" / "3").mkdir()
        (repo / "mlp" / "3" / "model.onnx").write_bytes(b"garbage, not a protobuf" * 10)
        wait_until(lambda: index_rows(c, "mlp").get(("mlp", "3"), ("", ""))[0] == "UNAVAILABLE", TIMEOUT,
                   "the failed load of mlp version 3")
        assert "onnxruntime failed to load" in index_rows(c, "mlp")[("mlp", "3")][1]
        time.sleep(4 * POLL_SECS)
        assert srv.stderr_text().count("poll: failed to load model 'mlp'") == 1
        assert infer(c, "mlp", {"input": x}).get_response().model_version == "2"
        # ... and once it is fixed, it loads.
        (repo / "mlp" / "3" / "model.onnx").write_bytes(v2)
        wait_until(lambda: served_versions(c, "mlp") == ["3"], TIMEOUT, "mlp version 3 to serve")

        # Removing a model directory unloads it.
        shutil.rmtree(repo / "add_sub")
        wait_until(lambda: not c.is_model_ready("add_sub"), TIMEOUT, "add_sub to unload")
        expect_error(lambda: infer(c, "add_sub", {"INPUT0": a, "INPUT1": a}), "UNAVAILABLE", "add_sub")
        assert c.is_model_ready("mlp")
        assert c.is_server_ready()
    finally:
        c.close()

"""Sub-millisecond queue delays (skipped when nobody could join, kept precisely when others do) and the
onnxruntime spinning mode chosen per model. Behaviour only: decisions, timer arms, batch sizes, session
options; never a timing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from skewless.examples.generate import build_test_models
from skewless.server.batching.precise_timer import PreciseTimer
from skewless.server.errors import ModelLoadError
from skewless.server.models import runtime
from skewless.server.models.config import parse_config
from skewless.server.models.runtime import bounded_spin_supported, session_options, spinning_mode
from skewless.server.models.version import ModelVersion

ADD_SUB = """max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [16] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [16] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [16] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
ONES = {"INPUT0": np.ones((1, 16), np.float32), "INPUT1": np.ones((1, 16), np.float32)}


@pytest.fixture(scope="module")
def add_sub(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("delay_models")
    build_test_models(root)
    return root / "add_sub" / "1" / "model.onnx"


def version(tmp_path: Path, model_file: Path, config: str) -> ModelVersion:
    vdir = tmp_path / "m" / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").write_bytes(model_file.read_bytes())
    return ModelVersion("m", 1, vdir, parse_config(f'name: "m"\n{config}', "test"), True, 4)


async def one(mv: ModelVersion) -> np.ndarray:
    outs, _ = await asyncio.wait_for(mv.scheduler.infer(ONES, ["OUTPUT0"], 1), timeout=60)  # a hang guard
    return outs[0]


def test_precise_timer_fires_and_a_cancel_wins():
    async def main():
        timer, loop, fired = PreciseTimer(), asyncio.get_running_loop(), []
        done = asyncio.Event()  # set last: by then the others have fired or been dropped
        timer.call_later(0.0004, loop, lambda: fired.append("b"))
        cancelled = timer.call_later(0.0002, loop, lambda: fired.append("cancelled"))
        timer.call_later(0.0001, loop, lambda: fired.append("a"))
        timer.call_later(0.05, loop, done.set)
        cancelled.cancel()
        await asyncio.wait_for(done.wait(), timeout=30)
        assert sorted(fired) == ["a", "b"] and timer.armed == 4  # order is the clock's: not asserted

    asyncio.run(main())


def test_one_client_with_a_sub_ms_delay_runs_at_once(tmp_path, add_sub):
    async def main():
        mv = version(tmp_path, add_sub, ADD_SUB + "dynamic_batching { max_queue_delay_microseconds: 200 }")
        for _ in range(5):  # one closed-loop client: the next request comes well after the delay
            np.testing.assert_allclose(await one(mv), 2.0)
            await asyncio.sleep(0.003)
        batcher = mv.scheduler.batcher
        assert batcher.skips_delay(time.perf_counter())
        assert batcher.timers_armed == 0  # no request waited for company
        assert mv.stats.execution_count == 5 and list(mv.stats.by_batch_size) == [1]
        await mv.drain_and_close()

    asyncio.run(main())


def test_a_delay_of_milliseconds_is_waited_for_as_triton_does(tmp_path, add_sub):
    async def main():
        mv = version(tmp_path, add_sub, ADD_SUB + "dynamic_batching { max_queue_delay_microseconds: 50000 }")
        for _ in range(3):
            np.testing.assert_allclose(await one(mv), 2.0)
            await asyncio.sleep(0.003)
        batcher = mv.scheduler.batcher
        assert not batcher.skips_delay(time.perf_counter())
        assert batcher.timers_armed == 3  # each lone request waited out the delay
        await mv.drain_and_close()

    asyncio.run(main())


def test_skip_idle_delay_off_waits_as_triton_does(tmp_path, add_sub):
    async def main():
        mv = version(tmp_path, add_sub, ADD_SUB + """
            parameters { key: "skewless.skip_idle_delay" value { string_value: "0" } }
            dynamic_batching { max_queue_delay_microseconds: 200 }""")
        np.testing.assert_allclose(await one(mv), 2.0)
        assert not mv.scheduler.batcher.skips_delay(time.perf_counter())
        await mv.drain_and_close()

    asyncio.run(main())


def test_concurrent_requests_still_batch_within_a_sub_ms_delay(tmp_path, add_sub):
    async def main():
        # Every batch runs in the worker thread (none inline), so the first is still running as the others arrive.
        mv = version(tmp_path, add_sub, ADD_SUB + """
            parameters { key: "skewless.inline_compute_us" value { string_value: "0" } }
            dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 500 }""")
        outs = await asyncio.gather(*(one(mv) for _ in range(8)))  # eight arrive in one loop turn
        for out in outs:
            np.testing.assert_allclose(out, 2.0)
        # The first finds the batcher idle and nobody seen yet: it runs at once. The others find it running,
        # so they queue: a preferred batch of 4 forms at once, the other 3 wait out the delay.
        assert mv.stats.execution_count == 3 and sorted(mv.stats.by_batch_size) == [1, 3, 4]
        batcher = mv.scheduler.batcher
        assert not batcher.skips_delay(time.perf_counter())  # company was seen
        await mv.drain_and_close()

    asyncio.run(main())


def _cfg(params: dict[str, str]):
    text = "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items())
    return parse_config(f'name: "m"\n{ADD_SUB}{text}', "test")


POOLED = "bounded" if bounded_spin_supported() else "during_run"


@pytest.mark.parametrize("params, threads, mode", [
    ({}, 4, POOLED),
    ({}, 1, "never"),
    ({"intra_op_allow_spinning": "1"}, 1, "always"),
    ({"intra_op_allow_spinning": "0"}, 4, "never"),
    ({"skewless.intra_op_spinning": "never"}, 4, "never"),
    ({"skewless.intra_op_spinning": "always"}, 4, "always"),
    ({"skewless.intra_op_spinning": "during_run"}, 4, "during_run"),
])
def test_spinning_mode_is_chosen_per_model(params, threads, mode):
    cfg = _cfg(params)
    assert spinning_mode(cfg, threads) == mode
    so = session_options(cfg, threads)
    spin = "0" if mode == "never" else "1"
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == spin
    assert so.get_session_config_entry("session.force_spinning_stop") == ("1" if mode == "during_run" else "0")
    if mode == "bounded":
        assert so.get_session_config_entry("session.intra_op.spin_duration_us") == "1000"
    else:  # onnxruntime's own spin length, or none
        with pytest.raises(RuntimeError):
            so.get_session_config_entry("session.intra_op.spin_duration_us")


@pytest.mark.skipif(not bounded_spin_supported(), reason="needs onnxruntime 1.26+ (spin_duration_us)")
def test_bounded_spin_takes_its_duration_from_the_config():
    so = session_options(_cfg({"skewless.intra_op_spin_us": "300"}), 4)
    assert so.get_session_config_entry("session.intra_op.spin_duration_us") == "300"
    assert so.get_session_config_entry("session.inter_op.spin_duration_us") == "300"
    so = session_options(_cfg({}), 4)
    assert so.get_session_config_entry("session.intra_op.spin_duration_us") == "1000"
    with pytest.raises(ModelLoadError, match="skewless.intra_op_spin_us"):
        session_options(_cfg({"skewless.intra_op_spin_us": "-1"}), 4)


def test_bounded_spin_needs_an_onnxruntime_that_bounds_it(monkeypatch):
    """Before 1.26 onnxruntime ignores spin_duration_us and spins ~40 ms after every run: 'auto' falls back
    to during_run there, and an explicit 'bounded' is refused rather than silently burning a core."""
    monkeypatch.setattr(runtime.ort, "__version__", "1.25.1")
    assert not bounded_spin_supported()
    assert spinning_mode(_cfg({}), 4) == "during_run"
    with pytest.raises(ModelLoadError, match="onnxruntime 1.26"):
        spinning_mode(_cfg({"skewless.intra_op_spinning": "bounded"}), 4)
    monkeypatch.setattr(runtime.ort, "__version__", "1.26.0")
    assert spinning_mode(_cfg({}), 4) == "bounded"


def test_loaded_sessions_spin_only_during_runs_unless_told(tmp_path, add_sub):
    mv = version(tmp_path, add_sub, ADD_SUB + 'parameters { key: "intra_op_thread_count" value { string_value: "2" } }')
    opts = mv.runtime.instances[0].session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    if bounded_spin_supported():
        assert opts.get_session_config_entry("session.force_spinning_stop") == "0"
        assert opts.get_session_config_entry("session.intra_op.spin_duration_us") == "1000"
    else:
        assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
    mv.runtime.close()
    with pytest.raises(ModelLoadError, match="skewless.intra_op_spinning"):
        spinning_mode(_cfg({"skewless.intra_op_spinning": "sometimes"}), 2)


@pytest.mark.skipif(not bounded_spin_supported(), reason="needs onnxruntime 1.26+ (spin_duration_us)")
def test_an_idle_bounded_session_stops_spinning(tmp_path):
    """The point of 'bounded': once runs stop, the pool stops burning CPU within the bound (1 ms here),
    where onnxruntime's own spin would cost ~40 ms of a core after each run. Measured as this process's CPU
    time while it sleeps after a run of a model large enough to use the pool."""
    import onnxruntime as ort

    from skewless.benchmarks.batching_report import build_heavy_onnx

    model = build_heavy_onnx(tmp_path / "heavy.onnx", (256, 1024, 1024, 10), 3)
    so = session_options(_cfg({}), 2)
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    x = np.ones((64, 256), np.float32)
    for _ in range(5):
        sess.run(None, {"input": x})
    idle_cpu = 0.0
    for _ in range(5):
        sess.run(None, {"input": x})
        c0 = time.process_time()
        time.sleep(0.1)
        idle_cpu += time.process_time() - c0
    assert idle_cpu < 0.1, f"{idle_cpu * 1e3:.0f} ms of CPU in 500 ms of idling after runs"

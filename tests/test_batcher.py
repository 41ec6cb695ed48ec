"""Dynamic batcher semantics on real onnxruntime sessions, driven in-process on one event loop.

A deliberately slow one-instance model keeps the instance busy, so what waits in the queue, and in which
order it runs, is decided by the batcher alone.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from skewless.examples.generate import build_test_models, make_slow_model
from skewless.server.batching.adaptive import percentile
from skewless.server.batching.batcher import Pending
from skewless.server.errors import DeadlineExceeded, Internal, InvalidArgument, Unavailable
from skewless.server.models.config import parse_config
from skewless.server.models.version import ModelVersion

SLOW_IO = """
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batcher_models")
    build_test_models(root)
    make_slow_model(root / "slow.onnx", 150.0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "n"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "ident", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              root / "ident.onnx")
    # Its output has twice as many rows as its input, so a merged batch cannot be split back.
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, ["b2", 4])
    graph = helper.make_graph([helper.make_node("Concat", ["x", "x"], ["s"], axis=0)], "doubler",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])], [s])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              root / "doubler.onnx")
    return root


# The add_sub test model batching up to 8 rows (config text; a test appends what it is about).
ADD_SUB_INPUTS = 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [16] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [16] } ]'
ADD_SUB_8 = f"""max_batch_size: 8
{ADD_SUB_INPUTS}
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [16] }}, {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [16] }} ]"""
ADD_SUB_8_OUTPUT0 = f"""max_batch_size: 8
{ADD_SUB_INPUTS}
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [16] }} ]"""


def version(tmp_path: Path, model_file: Path, config: str, name: str = "m") -> ModelVersion:
    vdir = tmp_path / name / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").write_bytes(model_file.read_bytes())
    return ModelVersion(name, 1, vdir, parse_config(f'name: "{name}"\n{config}', "test"), True, 4)


def slow_version(tmp_path, models, batching: str, max_batch_size: int = 1, instances: int = 1) -> ModelVersion:
    cfg = (f"max_batch_size: {max_batch_size}\n{SLOW_IO}\n"
           f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\ndynamic_batching {{ {batching} }}")
    return version(tmp_path, models / "slow.onnx", cfg)


def x(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 4), value, dtype=np.float32)}


async def submit(mv: ModelVersion, value: float, rows: int = 1, **kw):
    outs, _ = await mv.scheduler.infer(x(value, rows), ["y"], rows, **kw)
    return outs[0]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_merge_and_split_exactly(tmp_path, models):
    async def main():
        mv = version(tmp_path, models / "add_sub" / "1" / "model.onnx", ADD_SUB_8 + """
            dynamic_batching { }""")
        rng = np.random.default_rng(1)
        reqs = []
        for i in range(40):
            rows = int(rng.integers(1, 5))
            a, b = rng.random((rows, 16), np.float32), rng.random((rows, 16), np.float32)
            outputs = ["OUTPUT1"] if i % 3 == 0 else ["OUTPUT0", "OUTPUT1"]
            reqs.append((a, b, outputs, mv.scheduler.infer({"INPUT0": a, "INPUT1": b}, outputs, rows)))
        results = await asyncio.gather(*(r[3] for r in reqs))
        for (a, b, outputs, _), (outs, _) in zip(reqs, results, strict=True):
            expect = {"OUTPUT0": a + b, "OUTPUT1": a - b}
            assert len(outs) == len(outputs)
            for name, got in zip(outputs, outs, strict=True):
                np.testing.assert_array_equal(got, expect[name])
        assert mv.stats.executed_rows == sum(r[0].shape[0] for r in reqs)
        assert mv.stats.execution_count < len(reqs)  # they were merged
        assert max(mv.stats.by_batch_size) <= 8
        await mv.drain_and_close()

    run(main())


def test_incompatible_shapes_are_never_merged(tmp_path, models):
    async def main():
        mv = version(tmp_path, models / "ident.onnx", """
            max_batch_size: 16
            input [ { name: "x" data_type: TYPE_FP32 dims: [-1] } ]
            output [ { name: "y" data_type: TYPE_FP32 dims: [-1] } ]
            dynamic_batching { }""")
        feeds = [np.full((1, 3 + i % 2), i, np.float32) for i in range(10)]
        futures = [mv.scheduler.infer({"x": f}, ["y"], 1) for f in feeds]
        results = await asyncio.gather(*futures)
        for f, (outs, _) in zip(feeds, results, strict=True):
            np.testing.assert_array_equal(outs[0], f)
        # The first finds an idle instance and runs alone; the nine queued behind it form one batch per shape.
        assert mv.stats.execution_count == 3
        assert sorted(mv.stats.by_batch_size) == [1, 4, 5]
        await mv.drain_and_close()

    run(main())


def test_higher_priority_runs_first(tmp_path, models):
    async def main():
        mv = slow_version(tmp_path, models, "priority_levels: 2 default_priority_level: 2")
        order: list[str] = []

        async def tagged(tag, **kw):
            await submit(mv, 1.0, **kw)
            order.append(tag)

        busy = asyncio.create_task(tagged("busy"))
        await asyncio.sleep(0.02)  # the busy request now occupies the only instance
        low = asyncio.create_task(tagged("low", priority=2))
        await asyncio.sleep(0)
        high = asyncio.create_task(tagged("high", priority=1))
        await asyncio.gather(busy, low, high)
        assert order == ["busy", "high", "low"]
        with pytest.raises(InvalidArgument, match="priority 3 is out of range"):
            await submit(mv, 1.0, priority=3)
        await mv.drain_and_close()

    run(main())


def test_full_queue_rejects_with_unavailable(tmp_path, models):
    async def main():
        mv = slow_version(tmp_path, models, "default_queue_policy { max_queue_size: 1 }")
        busy = asyncio.create_task(submit(mv, 1.0))
        await asyncio.sleep(0.02)
        queued = asyncio.create_task(submit(mv, 2.0))
        await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="Exceeds maximum queue size"):
            await submit(mv, 3.0)
        assert (await queued)[0, 0] == 4.0
        await busy
        await mv.drain_and_close()

    run(main())


def test_queue_timeout_rejects_and_is_not_computed(tmp_path, models):
    async def main():
        mv = slow_version(tmp_path, models, "default_queue_policy { default_timeout_microseconds: 20000 }")
        busy = asyncio.create_task(submit(mv, 1.0))
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match="Request timeout expired"):
            await submit(mv, 2.0)
        await busy
        assert mv.stats.executed_rows == 1
        await mv.drain_and_close()

    run(main())


def test_timeout_override_only_when_allowed(tmp_path, models):
    async def main():
        mv = slow_version(tmp_path, models, "default_queue_policy { allow_timeout_override: true }")
        busy = asyncio.create_task(submit(mv, 1.0))
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match="Request timeout expired"):
            await submit(mv, 2.0, timeout_us=10_000)
        await busy
        await mv.drain_and_close()

        mv2 = slow_version(tmp_path / "b", models, "")
        busy = asyncio.create_task(submit(mv2, 1.0))
        await asyncio.sleep(0.01)
        assert (await submit(mv2, 2.0, timeout_us=10_000))[0, 0] == 4.0  # override ignored
        await busy
        await mv2.drain_and_close()

    run(main())


def test_delay_action_runs_timed_out_request_last(tmp_path, models):
    async def main():
        mv = slow_version(tmp_path, models, """
            priority_levels: 2 default_priority_level: 2
            priority_queue_policy { key: 1 value { timeout_action: DELAY default_timeout_microseconds: 10000 } }""")
        order: list[str] = []

        async def tagged(tag, **kw):
            await submit(mv, 1.0, **kw)
            order.append(tag)

        busy = asyncio.create_task(tagged("busy"))
        await asyncio.sleep(0.005)
        delayed = asyncio.create_task(tagged("delayed", priority=1))
        await asyncio.sleep(0.03)  # its 10 ms queue timeout has passed: it is now delayed, not rejected
        normal = asyncio.create_task(tagged("normal", priority=2))
        await asyncio.gather(busy, delayed, normal)
        assert order == ["busy", "normal", "delayed"]
        await mv.drain_and_close()

    run(main())


def test_expired_deadline_and_cancelled_requests_are_not_computed(tmp_path, models):
    async def main():
        mv = slow_version(tmp_path, models, "")
        loop = asyncio.get_running_loop()
        busy = asyncio.create_task(submit(mv, 1.0))
        await asyncio.sleep(0.01)
        with pytest.raises(DeadlineExceeded, match="not computed"):
            await submit(mv, 2.0, deadline=loop.time() + 0.01)
        cancelled = asyncio.create_task(submit(mv, 3.0))
        await asyncio.sleep(0)
        cancelled.cancel()
        await busy
        after = await submit(mv, 5.0)
        assert after[0, 0] == 10.0
        assert mv.stats.executed_rows == 2  # busy and after: nothing else ran
        await mv.drain_and_close()

    run(main())


def test_queue_delay_waits_for_a_preferred_batch(tmp_path, models):
    async def main():
        mv = version(tmp_path, models / "add_sub" / "1" / "model.onnx", ADD_SUB_8 + """
            dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 600000000 }""")
        ones = {"INPUT0": np.ones((1, 16), np.float32), "INPUT1": np.ones((1, 16), np.float32)}
        first = [asyncio.ensure_future(mv.scheduler.infer(ones, ["OUTPUT0"], 1)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert not any(f.done() for f in first)  # waiting for a fuller batch, within the delay
        rest = [asyncio.ensure_future(mv.scheduler.infer(ones, ["OUTPUT0"], 1)) for _ in range(2)]
        # The delay is 10 minutes: only reaching the preferred size can release the batch (the timeout is a
        # hang guard, not a speed check).
        await asyncio.wait_for(asyncio.gather(*first, *rest), timeout=60)
        assert mv.stats.execution_count == 1 and list(mv.stats.by_batch_size) == [4]
        await mv.drain_and_close()

    run(main())


def test_preserve_ordering_releases_in_arrival_order(tmp_path, models):
    async def main():
        mv = slow_version(tmp_path, models, "preserve_ordering: true", instances=2)
        await submit(mv, 1.0)
        batcher = mv.scheduler.batcher
        base = batcher._next_release
        settled: list[int] = []
        pend = [Pending({}, 1, ["y"], (), lambda r, e, c, s=base + i: settled.append(s), 0.0, 1, base + i)
                for i in range(3)]
        batcher._finish(pend[2], "c", None)
        batcher._finish(pend[1], "b", None)
        await asyncio.sleep(0)
        assert settled == []  # the first request is still running: later ones wait for it
        batcher._finish(pend[0], "a", None)
        await asyncio.sleep(0)
        assert settled == [base, base + 1, base + 2]
        await mv.drain_and_close()

    run(main())


def test_failed_batch_fails_every_request_in_it(tmp_path, models):
    async def main():
        mv = version(tmp_path, models / "doubler.onnx", """
            max_batch_size: 8
            input [ { name: "x" data_type: TYPE_FP32 dims: [4] } ]
            output [ { name: "s" data_type: TYPE_FP32 dims: [4] } ]
            dynamic_batching { }""")
        # The first runs alone on the idle instance; the three queued behind it merge into one batch.
        futures = [mv.scheduler.infer(x(1.0), ["s"], 1) for _ in range(4)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert results[0][0][0].shape == (2, 4)
        assert all(isinstance(r, Internal) and "cannot be split" in str(r) for r in results[1:]), results
        (alone,), _ = await mv.scheduler.infer(x(1.0), ["s"], 1)  # the batcher survives and serves the next one
        assert alone.shape == (2, 4)
        await mv.drain_and_close()

    run(main())


def _per_row_cost_model(path: Path, iterations_per_row: int, size: int = 96) -> None:
    """y = x * 2, after a loop whose trip count is rows * iterations_per_row: cost grows with the batch."""
    from onnx import numpy_helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("MatMul", ["s", "s"], ["ss"]),
         helper.make_node("Mul", ["ss", "k"], ["sk"]), helper.make_node("Tanh", ["sk"], ["s_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [size, size])],
        [numpy_helper.from_array(np.array(1.0 / size, np.float32), "k")])
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], start=0, end=1),
        helper.make_node("Mul", ["shape", "per_row"], ["trips1"]),
        helper.make_node("Squeeze", ["trips1"], ["trips"]),
        helper.make_node("Loop", ["trips", "cond", "s0"], ["s_final"], body=body),
        helper.make_node("ReduceSum", ["s_final"], ["h"], keepdims=0),
        helper.make_node("Mul", ["h", "neg_zero"], ["z"]),
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "z"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([iterations_per_row], np.int64), "per_row"),
             numpy_helper.from_array(np.array(True), "cond"),
             numpy_helper.from_array(np.full((size, size), 0.5, np.float32), "s0"),
             numpy_helper.from_array(np.array(-0.0, np.float32), "neg_zero"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    graph = helper.make_graph(nodes, "per_row", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def test_adaptive_mode_shrinks_batches_to_meet_the_objective(tmp_path, models):
    _per_row_cost_model(tmp_path / "per_row.onnx", 30)

    async def main():
        mv = version(tmp_path, tmp_path / "per_row.onnx", f"""
            max_batch_size: 32
            {SLO_IO}
            parameters {{ key: "skewless.latency_slo_ms" value {{ string_value: "{SLO_MS}" }} }}
            parameters {{ key: "skewless.latency_slo_percentile" value {{ string_value: "90" }} }}
            dynamic_batching {{ }}""")
        one_row = await submit(mv, 1.0)  # calibrate: how long does a single row take here?
        assert one_row[0, 0] == 2.0
        loop = asyncio.get_running_loop()
        stop = loop.time() + 3.0

        async def client(i: int) -> None:
            while loop.time() < stop:
                out = await submit(mv, float(i))
                assert out[0, 0] == 2.0 * i

        await asyncio.gather(*(client(i) for i in range(32)))
        ctl = mv.scheduler.adaptive
        assert ctl is not None and ctl.adjustments > 0
        assert ctl.cap < 32  # 32 rows cost far more than the objective: it had to shrink
        await mv.drain_and_close()

    run(main())


SLO_MS = 20
SLO_IO = """
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
"""


def test_adaptive_mode_adds_no_delay_under_low_load():
    from skewless.server.batching.adaptive import AdaptiveController

    ctl = AdaptiveController(slo_s=0.010, percentile=99, max_batch_size=8, max_delay_s=0.005)
    now = 100.0
    for i in range(20):  # one request every 100 ms: nothing else will arrive within the budget
        ctl.on_arrival(now + 0.1 * i)
    assert ctl.wait_budget(now + 1.9, now + 1.9) == 0.0
    assert not ctl.expects_company(now + 1.9)
    for i in range(200):  # one every 0.1 ms: waiting 2.5 ms gathers about 25 more
        ctl.on_arrival(now + 2 + 0.0001 * i)
    t = now + 2 + 0.0001 * 199
    assert 0 < ctl.wait_budget(t, t) <= 0.0025
    # ... but a high rate alone is no evidence of other clients: one closed-loop client is never busy
    assert not ctl.expects_company(t)
    ctl.on_arrival(t + 0.0001, busy=True)  # this one arrived while another was queued
    assert ctl.expects_company(t + 0.0001) and not ctl.expects_company(t + 0.2)
    ctl.on_arrival(t + 0.3)
    ctl.on_arrival(t + 0.3 + 20e-6)  # two arrivals 20 us apart: no single client is that fast
    assert ctl.expects_company(t + 0.31)
    ctl.on_arrival(t + 0.5)
    ctl.on_done(t + 0.5 + 80e-6)  # handled inline in 80 us
    ctl.on_arrival(t + 0.5 + 90e-6)  # the next was already waiting: 10 us after the completion
    assert ctl.expects_company(t + 0.51)
    ctl.on_done(t + 0.7)
    ctl.on_arrival(t + 0.7 + 300e-6)  # a closed-loop client's next request, a round trip later
    assert not ctl.expects_company(t + 0.7 + 300e-6)


def test_adaptive_mode_does_not_spend_the_delay_when_nobody_else_is_coming(tmp_path, models):
    async def main():
        mv = version(tmp_path, models / "add_sub" / "1" / "model.onnx", ADD_SUB_8 + """
            parameters { key: "skewless.latency_slo_ms" value { string_value: "2000000" } }
            dynamic_batching { max_queue_delay_microseconds: 600000000 }""")
        ones = {"INPUT0": np.ones((1, 16), np.float32), "INPUT1": np.ones((1, 16), np.float32)}
        for _ in range(4):  # one request every 50 ms: the delay would never gather a second one
            mv.enter()  # as the data plane does: one request in flight
            try:
                # A spent budget would hold each request for minutes (half the 10-minute delay): the timeout is
                # a hang guard that only a waiting batcher can reach, not a speed check.
                await asyncio.wait_for(mv.scheduler.infer(ones, ["OUTPUT0"], 1), timeout=60)
            finally:
                mv.leave()
            assert not mv.scheduler.adaptive.expects_company(time.perf_counter())
            await asyncio.sleep(0.05)
        assert mv.stats.execution_count == 4
        await mv.drain_and_close()

    run(main())


def test_cheap_batches_run_inline_and_slow_ones_never_block_the_loop(tmp_path, models):
    """The inline decision: a model measured cheap runs its batches on the event loop (no thread hand-off);
    a slow one always runs in its worker thread, so the loop keeps turning while it computes."""
    async def main():
        cheap = version(tmp_path, models / "add_sub" / "1" / "model.onnx", ADD_SUB_8_OUTPUT0 + """
            dynamic_batching { }""", name="cheap")
        ones = {"INPUT0": np.ones((1, 16), np.float32), "INPUT1": np.ones((1, 16), np.float32)}
        assert not cheap.scheduler.runner.cheap_enough(1)  # nothing measured yet: the first batch goes to the worker
        for _ in range(50):  # a fresh worker thread's first runs are slow (~1 ms of CPU): the minimum decides
            await cheap.scheduler.infer(ones, ["OUTPUT0"], 1)
            if cheap.scheduler.runner.cheap_enough(1):
                break
        assert cheap.scheduler.runner.cheap_enough(1)
        future = cheap.scheduler.start(ones, ["OUTPUT0"], 1)
        assert future.done()  # ran inline, synchronously: no task, no thread
        np.testing.assert_array_equal(future.result()[0][0], np.full((1, 16), 2.0, np.float32))

        slow = slow_version(tmp_path, models, "", max_batch_size=4)
        for i in range(3):
            await submit(slow, float(i))
        assert not slow.scheduler.runner.cheap_enough(1)
        # A slow batch never runs on the loop: start() returns before it computes, and the loop keeps turning
        # (this coroutine resumes) while the batch runs in the model's worker thread.
        future = slow.scheduler.start(x(5.0), ["y"], 1)
        assert not future.done()
        turns = 0
        while not future.done():
            await asyncio.sleep(0.005)
            turns += 1
        assert turns > 1
        assert future.result()[0][0][0, 0] == 10.0
        await cheap.drain_and_close()
        await slow.drain_and_close()

    run(main())


def test_a_lone_request_runs_inline_up_to_the_idle_limit(tmp_path, models):
    """skewless.idle_inline_us: while no other request is in flight on the server, a batch measured under the
    idle limit runs on the event loop (no hand-off to the worker thread and back); with another request in
    flight the same batch goes to the worker thread, so the loop keeps serving the others. Here the everyday
    inline limit is 0, so only the idle rule can put a batch on the loop."""
    async def main():
        mv = version(tmp_path, models / "add_sub" / "1" / "model.onnx", ADD_SUB_8_OUTPUT0 + """
            dynamic_batching { }
            parameters { key: "skewless.inline_compute_us" value { string_value: "0" } }
            parameters { key: "skewless.idle_inline_us" value { string_value: "1000000" } }""")
        ones = {"INPUT0": np.ones((1, 16), np.float32), "INPUT1": np.ones((1, 16), np.float32)}
        await mv.scheduler.infer(ones, ["OUTPUT0"], 1)  # measured once, in the worker thread
        mv.enter()  # this request alone: inline, answered before start() returns
        future = mv.scheduler.start(ones, ["OUTPUT0"], 1)
        assert future.done()
        np.testing.assert_array_equal(future.result()[0][0], np.full((1, 16), 2.0, np.float32))
        mv.leave()
        mv.enter()
        mv.total.n += 1  # another request in flight elsewhere on the server: the worker thread
        future = mv.scheduler.start(ones, ["OUTPUT0"], 1)
        assert not future.done()
        np.testing.assert_array_equal((await future)[0][0], np.full((1, 16), 2.0, np.float32))
        mv.total.n -= 1
        mv.run_off_loop()  # a model that waits on the network never runs on the loop, alone or not
        future = mv.scheduler.start(ones, ["OUTPUT0"], 1)
        assert not future.done()
        await future
        mv.leave()
        await mv.drain_and_close()

    run(main())


def test_batch_cost_limits():
    """The inline decision's arithmetic: unmeasured sizes never run inline; a larger size class is estimated
    from a smaller one scaled by the row ratio; the idle limit applies only when the server is idle."""
    from skewless.server.batching.cost import BatchCost

    cost = BatchCost(inline_limit_ns=100_000, idle_limit_ns=2_000_000)
    assert not cost.cheap_enough(1) and not cost.cheap_enough(1, idle=True)
    cost.record(1, 50_000)
    cost.record(1, 80_000)  # the minimum of recent runs is the estimate
    assert cost.estimate_ns(1) == 50_000 and cost.cheap_enough(1)
    assert cost.estimate_ns(8) == 50_000 * 8  # size class 4 from class 1: 8x the rows' class
    assert not cost.cheap_enough(8) and cost.cheap_enough(8, idle=True)
    cost.record(64, 1_500_000)
    assert not cost.cheap_enough(64) and cost.cheap_enough(64, idle=True)
    cost.record(256, 3_000_000)
    assert not cost.cheap_enough(256, idle=True)


def test_adaptive_wait_budget_follows_the_latency_objective():
    """The wait budget's own AIMD: halved while the wait is what makes in-server latency break the objective,
    kept when the latency is an overloaded queue, grown back (never past half the objective) while latency
    stays well under it."""
    from skewless.server.batching.adaptive import AdaptiveController

    ctl = AdaptiveController(slo_s=0.010, percentile=99, max_batch_size=64, max_delay_s=0.0)
    assert ctl.max_delay_s == pytest.approx(0.005) and ctl.delay_s == pytest.approx(0.0025)
    for _ in range(16):
        ctl.observe_latency(0.040)  # four times the objective: a queue, which no shorter wait would fix
    assert ctl.delay_s == pytest.approx(0.0025)
    for _ in range(16):
        ctl.observe_latency(0.012)  # over the objective by less than the wait
    assert ctl.delay_s < 0.0025
    low = ctl.delay_s
    for _ in range(200):
        ctl.observe_latency(0.002)
    assert low < ctl.delay_s == pytest.approx(0.005)


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_adaptive_percentile_matches_numpy(n):
    values = np.random.default_rng(n).random(n).tolist()
    for pct in (0, 50, 90, 99, 99.9, 100):
        assert percentile(values, pct) == pytest.approx(float(np.percentile(values, pct)), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("fortran", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.uint64, np.bool_, object])
def test_merge_and_split_round_trip(dtype, fortran):
    """A batch's inputs merged along the batch dimension, and outputs split back per request, exactly as
    numpy's concatenate and slicing would (views for the split, any dtype; object arrays go through numpy)."""
    from skewless.native.batch_merge import split_rows
    from skewless.server.models.version import merge_rows

    rng = np.random.default_rng(7)
    rows = [1, 3, 2, 1]
    feeds = [{"a": rng.integers(0, 100, (r, 2, 3)).astype(dtype)} for r in rows]
    if fortran:  # not C-contiguous: the native memcpy refuses it and numpy's concatenate takes over
        feeds[1]["a"] = np.asfortranarray(feeds[1]["a"])
    merged = merge_rows(feeds, "a")
    expected = np.concatenate([f["a"] for f in feeds])
    assert merged.dtype == expected.dtype and merged.shape == expected.shape
    np.testing.assert_array_equal(merged, expected)
    out = [merged, merged[:, 0, 0] * 2 if dtype is not object else merged[:, 0, 0]]
    parts = split_rows(out, rows)
    start = 0
    for r, part in zip(rows, parts, strict=True):
        for whole, piece in zip(out, part, strict=True):
            np.testing.assert_array_equal(piece, whole[start:start + r])
            assert np.shares_memory(piece, whole) or dtype is object
        start += r


def test_stream_end_drops_a_general_path_request_and_ends_its_task(tmp_path, models):
    """A stream's message with typed contents runs through the general path, in a task of its own; when the
    stream ends while it is queued, it is dropped uncomputed and its task ends too (cancelled, not left
    waiting forever for an outcome that will never come)."""
    from skewless.protos import grpc_service_pb2 as pb
    from skewless.server.dataplane import DataPlane
    from skewless.server.models.repository import ModelRepository

    (tmp_path / "slow" / "1").mkdir(parents=True)
    (tmp_path / "slow" / "1" / "model.onnx").write_bytes((models / "slow.onnx").read_bytes())
    (tmp_path / "slow" / "config.pbtxt").write_text(f"max_batch_size: 8\n{SLOW_IO}\ndynamic_batching {{ }}\n")

    def request(value: float, typed: bool) -> bytes:
        req = pb.ModelInferRequest(model_name="slow")
        tensor = req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        if typed:
            tensor.contents.fp32_contents.extend([value] * 4)
        else:
            req.raw_input_contents.append(np.full((1, 4), value, np.float32).tobytes())
        return req.SerializeToString()

    async def main():
        repo = ModelRepository(tmp_path)
        await repo.start()
        dp = DataPlane(repo)
        delivered = []
        gone = asyncio.get_running_loop().create_future()
        busy = dp.infer_bytes(request(1.0, False))  # ~150 ms on the one instance
        await asyncio.sleep(0.02)
        task = dp.infer_bytes(request(2.0, True), None, None, True, lambda r, e: delivered.append((r, e)), gone)
        await asyncio.sleep(0.02)
        gone.cancel()
        await busy
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=5)
        assert task.cancelled() and delivered == []
        assert repo.get("slow").stats.inference_count == 1
        await repo.stop()

    run(main())


def test_a_queued_request_cancelled_through_its_handle_gets_its_hook_once_and_never_runs(tmp_path, models):
    """With a hook, what start() returns for a queued request serves only to cancel it: the hook then hears
    cancelled=True, exactly once, and the model never runs it."""
    async def main():
        mv = slow_version(tmp_path, models, "")
        busy = asyncio.create_task(submit(mv, 1.0))
        await asyncio.sleep(0.01)
        heard = []
        handle = mv.scheduler.start(x(2.0), ["y"], 1, hook=lambda r, e, c: heard.append((r, e, c)))
        assert handle.cancel()
        await busy
        assert (await submit(mv, 3.0))[0, 0] == 6.0
        assert heard == [(None, None, True)] and not handle.cancel()  # completed: nothing left to cancel
        assert mv.stats.executed_rows == 2
        await mv.drain_and_close()

    run(main())


def test_adaptive_population_is_the_count_after_a_recent_full_wait():
    from skewless.server.batching.adaptive import POPULATION_TTL_S, AdaptiveController

    ctl = AdaptiveController(slo_s=0.010, percentile=99, max_batch_size=64, max_delay_s=0.005)
    assert ctl.population(10.0) == float("inf")  # unknown: wait the whole budget
    ctl.after_full_wait(24, 10.0)
    assert ctl.population(10.0 + POPULATION_TTL_S / 2) == 24
    assert ctl.population(10.0 + 2 * POPULATION_TTL_S) == float("inf")  # lapsed: measure afresh
    ctl.after_full_wait(1, 11.0)  # one request is no population to wait for
    assert ctl.population(11.0) == float("inf")


def test_adaptive_wait_ends_once_every_closed_loop_client_is_waiting(tmp_path, models):
    """Eight closed-loop clients and a 100 ms wait budget: after one full wait has counted them, a batch goes
    as soon as all eight are queued again instead of idling out the budget. Counted, not timed: the batches
    cut by a full wait (the controller hears each through after_full_wait) are few, the rest went early."""

    async def main():
        config = ADD_SUB_8.replace("max_batch_size: 8", "max_batch_size: 32")  # room for more than 8
        mv = version(tmp_path, models / "add_sub" / "1" / "model.onnx", config + """
            parameters { key: "skewless.latency_slo_ms" value { string_value: "2000" } }
            dynamic_batching { max_queue_delay_microseconds: 200000 }""")
        ctl = mv.scheduler.adaptive
        full_waits = []
        counted = ctl.after_full_wait

        def after_full_wait(rows: int, now: float) -> None:  # the real method, its calls recorded
            full_waits.append(rows)
            counted(rows, now)

        ctl.after_full_wait = after_full_wait

        async def client(i: int) -> int:
            feeds = {"INPUT0": np.full((1, 16), i, np.float32), "INPUT1": np.ones((1, 16), np.float32)}
            done = 0
            while done < 40:
                mv.enter()
                try:
                    (out0,), _ = await mv.scheduler.infer(feeds, ["OUTPUT0"], 1)
                finally:
                    mv.leave()
                assert np.array_equal(out0, np.full((1, 16), i + 1, np.float32))  # its own rows, not another's
                done += 1
            return done

        done = await asyncio.gather(*(client(i) for i in range(8)))
        batches = mv.stats.execution_count
        assert full_waits and max(full_waits) == 8  # a full wait counted the eight clients
        # Without the early end every batch would be cut by a full wait; here most go as soon as all are in.
        assert len(full_waits) <= batches // 4, (len(full_waits), batches)
        assert sum(done) / batches >= 4  # still batching: a wait ends when everyone is here, not before
        await mv.drain_and_close()

    run(main())

"""The hand-off of batches from the event loop to a model's worker threads (server/batching/handoff.py):
results and exceptions reach the awaiting coroutine, a cancelled waiter never breaks a worker, N workers run
N jobs at once and no more, shutdown leaves no thread behind, and a hung worker is replaced by fresh threads
(the watchdog's restart), in the runner and in a loaded model. Real threads throughout; the timeouts below only
guard against a hang, nothing asserts how long anything took."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from skewless.examples.generate import make_slow_model, slow_model_iterations
from skewless.server.batching.cost import BatchCost
from skewless.server.batching.handoff import Handoff
from skewless.server.batching.runner import BatchRunner
from skewless.server.errors import InstanceHung
from skewless.server.models.config import parse_config
from skewless.server.models.runtime import HUNG_THREADS
from skewless.server.models.version import ModelVersion

GUARD_S = 30  # a hang guard, never a measurement


def run(coro):
    """Run on a fresh loop, failing the test if the loop saw an error in a callback (a result set twice, a
    callback on a cancelled future)."""
    errors: list[dict] = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        return await asyncio.wait_for(coro, GUARD_S)

    out = asyncio.run(main())
    assert not errors, errors
    return out


def join_threads(idents: set[int]) -> None:
    for t in threading.enumerate():
        if t.ident in idents:
            t.join(GUARD_S)
            assert not t.is_alive(), t.name


def test_results_and_exceptions_reach_the_awaiting_coroutine():
    h = Handoff(2, "t")

    def fail(kind: type[BaseException]):
        raise kind("boom")

    async def main():
        loop_thread = threading.get_ident()
        ident = await h.to_thread(threading.get_ident)
        assert ident != loop_thread and ident in h.thread_ids
        assert await h.to_thread(divmod, 7, 2) == (3, 1)
        with pytest.raises(ValueError, match="boom"):
            await h.to_thread(fail, ValueError)
        with pytest.raises(RuntimeError, match="StopIteration"):  # an asyncio future cannot hold one
            await h.to_thread(fail, StopIteration)
        # the Executor interface, on the same threads: run_in_executor and submit
        assert await asyncio.get_running_loop().run_in_executor(h, threading.get_ident) in h.thread_ids
        with pytest.raises(KeyError):
            await asyncio.get_running_loop().run_in_executor(h, fail, KeyError)
        assert h.submit(int, "12", base=16).result(GUARD_S) == 18
        with pytest.raises(ValueError):
            h.submit(fail, ValueError).result(GUARD_S)
        return await h.to_thread(sum, [1, 2, 3])  # the workers survived every failure

    assert run(main()) == 6
    h.shutdown()


def test_a_cancelled_waiter_never_breaks_the_worker():
    h = Handoff(1, "t")
    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []

    def blocker():
        started.set()
        gate.wait(GUARD_S)
        raise ValueError("after its waiter left")  # an exception for a cancelled future: dropped

    async def waiter(label: str):
        return await h.to_thread(ran.append, label)

    async def main():
        loop = asyncio.get_running_loop()
        running = h.to_thread(blocker)
        await loop.run_in_executor(None, started.wait, GUARD_S)
        queued = h.to_thread(ran.append, "queued")  # behind the blocker on the one thread
        task = asyncio.create_task(waiter("task"))
        await asyncio.sleep(0)  # the task now awaits its hand-off
        running.cancel()  # the job runs on: its late exception must be dropped, not set
        queued.cancel()  # still queued: never runs
        task.cancel()  # a coroutine cancelled while it awaits: its job, still queued, never runs
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        assert await h.to_thread(ran.append, "after") is None
        return h.submit(ran.append, "submitted")  # and the Executor side too

    submitted = run(main())
    h.shutdown(wait=True)
    assert submitted.done() and not submitted.cancelled()
    assert ran == ["after", "submitted"]  # the cancelled ones were skipped


@pytest.mark.parametrize("workers", [1, 3])
def test_n_workers_run_n_jobs_at_once_and_never_more(workers):
    h = Handoff(workers, "t")
    lock, active, peak = threading.Lock(), [0], [0]
    barrier = threading.Barrier(workers, timeout=GUARD_S)  # passes only if `workers` jobs run at once

    def together() -> int:
        barrier.wait()
        return threading.get_ident()

    def counted() -> int:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        threading.Event().wait(0.001)  # hold the thread a moment so jobs overlap where they can
        with lock:
            active[0] -= 1
        return threading.get_ident()

    async def main():
        first = await asyncio.gather(*(h.to_thread(together) for _ in range(workers)))
        assert len(set(first)) == workers
        more = await asyncio.gather(*(h.to_thread(counted) for _ in range(8 * workers)))
        return set(first), set(more)

    first, more = run(main())
    assert more <= first and set(h.thread_ids) == first  # threads are reused: never more than `workers`
    assert 1 <= peak[0] <= workers
    h.shutdown(wait=True)
    assert not any(t.is_alive() for t in threading.enumerate() if t.ident in first)


def test_threads_start_as_needed_are_daemons_and_shutdown_joins_them():
    h = Handoff(4, "lazy")
    assert h.thread_ids == []  # nothing started before the first job
    assert h.submit(threading.get_ident).result(GUARD_S) in h.thread_ids
    assert len(h.thread_ids) == 1  # one job at a time needs one thread
    threads = [t for t in threading.enumerate() if t.ident in h.thread_ids]
    assert threads and all(t.daemon for t in threads)  # never holds the process at exit
    gate = threading.Event()
    h.submit(gate.wait, GUARD_S)
    queued = h.submit(int, "5")
    h.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="shut down"):
        h.submit(int, "1")

    async def refused():
        with pytest.raises(RuntimeError, match="shut down"):
            h.to_thread(int, "1")

    run(refused())
    gate.set()
    assert queued.result(GUARD_S) == 5  # work queued before the shutdown still runs
    h.shutdown(wait=True)
    assert not any(t.is_alive() for t in threads)


def test_shutdown_can_cancel_queued_work():
    h = Handoff(1, "t")
    gate, started = threading.Event(), threading.Event()
    running = h.submit(lambda: (started.set(), gate.wait(GUARD_S)))
    assert started.wait(GUARD_S)
    queued = h.submit(int, "5")
    h.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    gate.set()
    h.shutdown(wait=True)
    assert running.result(GUARD_S) == (None, True)
    with pytest.raises(CancelledError):
        queued.result(0)


def _runner(executor, work, **kw) -> BatchRunner:
    return BatchRunner(work, executor, BatchCost(0), lambda *a: None, **kw)  # limit 0: never inline


def _work(seen: list[int], gate: threading.Event | None = None):
    def work(feeds, rows, outputs):
        seen.append(threading.get_ident())
        if gate is not None and len(seen) == 1:
            gate.wait(GUARD_S)  # the first batch "hangs" until the test lets it go
        return [[f["x"] * 2] for f in feeds], (1, 2, 3)
    return work


@pytest.mark.parametrize("executor", [lambda: Handoff(2, "t"), lambda: ThreadPoolExecutor(2)],
                         ids=["handoff", "any-executor"])
def test_the_runner_hands_batches_to_its_executor(executor):
    ex, seen = executor(), []
    runner = _runner(ex, _work(seen))
    x = np.arange(3, dtype=np.float32)

    async def main():
        return await runner.run([{"x": x}, {"x": x}], [3, 3], ["y"])

    per_request, queue_ns, info = run(main())
    assert [p[0].tolist() for p in per_request] == [[0, 2, 4]] * 2
    assert queue_ns >= 0 and (info.rows, info.requests, info.input_ns, info.infer_ns) == (6, 2, 1, 2)
    assert seen and seen[0] != threading.get_ident()
    ex.shutdown()


def test_a_hung_worker_is_abandoned_and_the_next_batch_runs_on_fresh_threads():
    old = Handoff(1, "old")
    gate, seen, hung = threading.Event(), [], []

    def on_hang(thread_id: int) -> None:  # what ModelVersion._restart_hung does, through runtime.restart_hung
        hung.append(thread_id)
        runner.executor.shutdown(wait=False)
        runner.executor = Handoff(1, "fresh")

    runner = _runner(old, _work(seen, gate), hang_timeout_s=0.05, on_hang=on_hang, label="'m' version 1")
    x = np.ones(2, np.float32)

    async def main():
        with pytest.raises(InstanceHung, match="instance_timeout_s"):
            await runner.run([{"x": x}], [2], ["y"])
        return await runner.run([{"x": x}], [2], ["y"])

    (out,), _, _ = run(main())
    assert out[0].tolist() == [2, 2] and runner.hangs == 1
    assert hung == [seen[0]] and seen[0] in old.thread_ids  # the watchdog named the hung thread
    fresh = runner.executor
    assert fresh is not old and seen[1] != seen[0] and seen[1] in fresh.thread_ids
    gate.set()  # the hung run returns: its result is dropped and its thread, shut down, exits
    join_threads({seen[0]})
    fresh.shutdown(wait=True)
    join_threads({seen[1]})


HANG = """
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "skewless.instance_timeout_s" value { string_value: "0.05" } }
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
parameters { key: "skewless.inline_compute_us" value { string_value: "0" } }
"""


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hang") / "model.onnx"
    make_slow_model(path, iterations=slow_model_iterations(500))  # ~0.5 s a run: "hung" past 0.05 s
    return path


def test_a_models_restart_gives_its_runner_fresh_threads(tmp_path, slow_model):
    vdir = tmp_path / "hang" / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").write_bytes(slow_model.read_bytes())
    mv = ModelVersion("hang", 1, vdir, parse_config(f'name: "hang"\n{HANG}', "test"), True, 4)
    x = {"x": np.ones((1, 4), np.float32)}

    async def hang_once() -> tuple[Handoff, set[int]]:
        before, instance = mv.runtime.executor, mv.runtime.instances[0]
        with pytest.raises(InstanceHung):
            await mv.scheduler.infer(x, ["y"], 1)
        while mv.runtime.instances[0] is instance:  # the fresh session is built on a thread of its own
            await asyncio.sleep(0.01)
        return before, set(before.thread_ids)

    async def main():
        first, first_threads = await hang_once()
        assert mv.runtime.restarts == 1 and mv.runtime.executor is not first
        assert mv._runner.executor is mv.runtime.executor  # the runner hands batches to the new threads
        assert first_threads and first_threads <= HUNG_THREADS
        second, second_threads = await hang_once()  # the next batch runs (and hangs) on a fresh thread
        assert second is not first and second_threads and not second_threads & first_threads
        assert mv.runtime.restarts == 2 and second_threads <= HUNG_THREADS
        return first_threads | second_threads

    abandoned = run(main())
    join_threads(abandoned)  # the abandoned runs return and their threads exit: nothing leaks

    async def close():
        await mv.drain_and_close()

    run(close())


def test_the_handoff_bench_runs_and_writes_its_json(tmp_path):
    from skewless.benchmarks import handoff_bench

    assert handoff_bench.main(["--quick", "--calls", "20", "--work-us", "50", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "handoff.json").read_text())
    assert {r["mode"] for r in result["rows"]} == set(handoff_bench.MODES) and len(result["rows"]) == 4
    assert set(result["summary"]) == {*handoff_bench.MODES, "saved_p50_us"}

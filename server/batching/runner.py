"""Runs a batch's work where it is cheapest: inline on the event loop, or in the model's worker threads.

The work itself (merge, features, model, split) is a plain callable the model layer hands in; the runner
only times it, feeds the cost estimate and the execution statistics, and picks the thread. The model layer's
executor is a Handoff (handoff.py), whose ``to_thread`` skips run_in_executor's layers; any other Executor
still works through run_in_executor.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from ..errors import InstanceHung
from .cost import BatchCost
from .handoff import Handoff

Feeds = dict[str, np.ndarray]
# (per-request inputs, rows per request, output names) -> (per-request outputs, (input, infer, output) ns)
BatchWork = Callable[[list[Feeds], list[int], list[str]], tuple[list[list[np.ndarray]], tuple[int, int, int]]]
# (rows, requests, compute_input ns, compute_infer ns, compute_output ns): Triton's execution statistics
ExecutionObserver = Callable[[int, int, int, int, int], None]


class BatchInfo:
    """What one executed batch did, handed with each of its requests' results (one per batch, not per
    request): a sampled request's trace builds its queue/features/compute spans from it after it completes,
    and ``span`` holds the (trace id, span id) of the batch's own span once its first traced request is exported."""

    __slots__ = ("start_ns", "input_ns", "infer_ns", "output_ns", "rows", "requests", "span")

    def __init__(self, start_ns: int, input_ns: int, infer_ns: int, output_ns: int, rows: int, requests: int):
        self.start_ns = start_ns  # the work began (perf_counter ns)
        self.input_ns = input_ns
        self.infer_ns = infer_ns
        self.output_ns = output_ns
        self.rows = rows
        self.requests = requests
        self.span = None


class _Watch:
    """Which worker thread a batch runs on, so a hung one can be named to the model layer."""

    __slots__ = ("thread",)

    def __init__(self) -> None:
        self.thread = 0


def _via_run_in_executor(executor: Executor) -> Callable[..., asyncio.Future]:
    """The hand-off for an executor that is not a Handoff: loop.run_in_executor, as before."""
    def hand_off(fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    return hand_off


class BatchRunner:
    """``idle()``: whether no other request is in flight on the server (the cost's idle limit then applies).
    ``hang_timeout_s``/``on_hang``: the watchdog. A batch in a worker thread that has not returned after
    ``hang_timeout_s`` fails its requests (InstanceHung) and ``on_hang(thread id)`` is called to restart the
    instance it holds (the thread itself cannot be stopped; the model layer gives the runner a fresh executor
    through ``executor``)."""

    def __init__(self, work: BatchWork, executor: Executor, cost: BatchCost, on_executed: ExecutionObserver,
                 hang_timeout_s: float | None = None, on_hang: Callable[[int], None] | None = None,
                 label: str = "", idle: Callable[[], bool] | None = None):
        self.work = work
        self.executor = executor  # the setter picks the hand-off
        self.cost = cost
        self.on_executed = on_executed
        self.idle = idle
        self.hang_timeout_s = hang_timeout_s
        self.on_hang = on_hang
        self.label = label
        self.hangs = 0

    @property
    def executor(self) -> Executor:
        """The model's worker threads; the watchdog's restart replaces them (models/version.py)."""
        return self._executor

    @executor.setter
    def executor(self, executor: Executor) -> None:
        self._executor = executor
        lean = isinstance(executor, Handoff)
        self._hand_off = executor.to_thread if lean else _via_run_in_executor(executor)

    def cheap_enough(self, rows: int) -> bool:
        """Whether a batch of ``rows`` runs inline on the event loop (cost.py)."""
        idle = self.idle
        return self.cost.cheap_enough(rows, idle is not None and idle())

    async def run(self, feeds: list[Feeds], rows: list[int], outputs: list[str]
                  ) -> tuple[list[list[np.ndarray]], int, BatchInfo]:
        """The outputs per request, how long the batch waited for a free worker thread (ns), and the batch's
        times."""
        if self.cheap_enough(sum(rows)):
            return self.run_inline(feeds, rows, outputs)
        if self.hang_timeout_s is None:
            result = await self._hand_off(self._timed, feeds, rows, outputs, time.perf_counter_ns())
            return self._recorded(rows, result)
        watch = _Watch()
        running = self._hand_off(self._watched, watch, feeds, rows, outputs, time.perf_counter_ns())
        try:  # shield: a batch still running cannot be cancelled; on timeout it is abandoned, not stopped
            result = await asyncio.wait_for(asyncio.shield(running), self.hang_timeout_s)
        except asyncio.TimeoutError:
            self.hangs += 1
            if watch.thread and self.on_hang is not None:
                self.on_hang(watch.thread)
            raise InstanceHung(
                f"model {self.label}: a batch of {sum(rows)} row(s) ran for more than {self.hang_timeout_s:g} s "
                "(skewless.instance_timeout_s) without returning; its requests failed and the instance was "
                "restarted") from None
        return self._recorded(rows, result)

    def _watched(self, watch: _Watch, feeds: list[Feeds], rows: list[int], outputs: list[str], submitted: int):
        watch.thread = threading.get_ident()
        return self._timed(feeds, rows, outputs, submitted)

    def run_inline(self, feeds: list[Feeds], rows: list[int], outputs: list[str]
                   ) -> tuple[list[list[np.ndarray]], int, BatchInfo]:
        """run() on the calling (event-loop) thread, for batches cheap_enough() says are short."""
        return self._recorded(rows, self._timed(feeds, rows, outputs, time.perf_counter_ns()))

    def _timed(self, feeds: list[Feeds], rows: list[int], outputs: list[str], submitted: int):
        t0 = time.perf_counter_ns()
        c0 = time.thread_time_ns()
        per_request, phases = self.work(feeds, rows, outputs)
        return per_request, t0 - submitted, time.thread_time_ns() - c0, phases, t0

    def _recorded(self, rows: list[int], result) -> tuple[list[list[np.ndarray]], int, BatchInfo]:
        per_request, queue_ns, cpu_ns, (input_ns, infer_ns, output_ns), t0 = result
        total = sum(rows)
        self.cost.record(total, cpu_ns)
        self.on_executed(total, len(rows), input_ns, infer_ns, output_ns)
        return per_request, queue_ns, BatchInfo(t0, input_ns, infer_ns, output_ns, total, len(rows))

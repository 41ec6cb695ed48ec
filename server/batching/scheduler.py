"""A model version's way in to execution: straight to the runner, or through its dynamic batcher.

The data plane hands each validated request here; what runs is the work the runner was given. Nothing here
knows what a model is beyond its name and batching configuration.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

import numpy as np

from skewless.protos import model_config_pb2 as mc

from ..parameters import read
from .adaptive import AdaptiveController
from .batcher import DynamicBatcher
from .runner import BatchInfo, BatchRunner, Feeds

# hook(result, error, cancelled), called exactly once; result is (outputs, queue ns, runner.BatchInfo)
Hook = Callable[[object, "BaseException | None", bool], None]


def _hook_from_future(hook: Hook, future: asyncio.Future) -> None:
    if future.cancelled():
        hook(None, None, True)
        return
    exc = future.exception()
    hook(None if exc is not None else future.result(), exc, False)


class Scheduler:
    def __init__(self, runner: BatchRunner, name: str, label: str, config: mc.ModelConfig, instances: int,
                 fixed_shapes: bool):
        self.runner = runner
        self.name = name
        self.label = label
        self.max_batch_size = config.max_batch_size
        self.batching_config = config.dynamic_batching
        self.batching = self.max_batch_size > 0 and config.HasField("dynamic_batching")
        self.adaptive = AdaptiveController.from_config(config) if self.batching else None
        self.skip_idle_delay = read(config, "skewless.skip_idle_delay")
        self.instances = instances
        self.fixed_shapes = fixed_shapes
        self.batcher: DynamicBatcher | None = None  # made on first use: it needs the running loop

    async def infer(self, feeds: Feeds, output_names: list[str], rows: int, priority: int = 0,
                    timeout_us: int | None = None, deadline: float | None = None
                    ) -> tuple[list[np.ndarray], int]:
        """Run one request, batched with others when the config enables dynamic batching.

        Returns the outputs in ``output_names`` order and the nanoseconds the request waited in the queue.
        """
        outs, queue_ns, _ = await self.start(feeds, output_names, rows, priority, timeout_us, deadline)
        return outs, queue_ns

    def start(self, feeds: Feeds, output_names: list[str], rows: int, priority: int = 0,
              timeout_us: int | None = None, deadline: float | None = None, hook: Hook | None = None,
              watch: asyncio.Future | None = None) -> asyncio.Future:
        """Queue (or start) one request without awaiting it: a future of (outputs, queue ns, BatchInfo).

        Cancelling the future before its batch forms drops the request uncomputed. With ``hook``, the outcome
        goes to ``hook(result, error, cancelled)``, exactly once, instead (see DynamicBatcher.submit), and
        what is returned only serves to cancel. Cancelling ``watch`` (the caller's future, or a stream's)
        drops the request while it is queued; one started at once (no queue to wait in) runs to completion,
        as its compute cannot be taken back from the worker thread anyway."""
        if self.batching:
            batcher = self.batcher
            if batcher is None:
                batcher = self.batcher = DynamicBatcher(
                    self.runner, self.name, self.label, self.batching_config, self.max_batch_size,
                    self.instances, self.adaptive, self.fixed_shapes, self.skip_idle_delay)
            if not batcher.arrive(time.perf_counter()) or priority:
                return batcher.submit(feeds, rows, output_names, priority, timeout_us, deadline, hook, watch)
            future = batcher.run_alone(feeds, rows, output_names)
        else:
            future = asyncio.ensure_future(self._run_unbatched(feeds, output_names, rows))
        if hook is not None:
            if future.done():  # ran inline: complete now, so the caller need not wait a loop turn to reply
                _hook_from_future(hook, future)
            else:
                future.add_done_callback(functools.partial(_hook_from_future, hook))
        return future

    async def _run_unbatched(self, feeds: Feeds, output_names: list[str], rows: int
                             ) -> tuple[list[np.ndarray], int, BatchInfo]:
        (outs,), queue_ns, info = await self.runner.run([feeds], [rows], output_names)
        return outs, queue_ns, info

    def queued(self) -> tuple[int, int]:
        """Requests and rows waiting in the queue now (what the metrics call pending and queue depth)."""
        batcher = self.batcher
        if batcher is None:
            return 0, 0
        return sum(len(q) for q in batcher.queues.values()) + len(batcher.delayed), batcher.queued_rows

    async def close(self) -> None:
        """Stop taking requests; queued ones still run."""
        if self.batcher is not None:
            await self.batcher.close()

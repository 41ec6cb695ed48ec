"""Dynamic batcher with Triton's semantics: per-model queues merged into batches, split back to callers.

A batch is formed only when an instance is free, so under load requests pile up while instances compute
and the next batch is as large as the queue allows without any added delay; ``max_queue_delay`` only
waits for a fuller batch when an instance is idle (the adaptive mode's wait is in adaptive.py); a
sub-millisecond delay is not waited out by a request that nobody could join (see ``skips_delay``), and
short waits are timed by precise_timer.py, not the loop's millisecond timers. The
scheduling runs on the event loop; a batch (merge, model run, split) runs in the model's worker thread,
or inline on the loop when it has measured cheaper than the hand-off (runner.py, cost.py). The batcher only
knows the work it is given to run (a BatchRunner) and the model's name: never the model's internals.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from skewless.protos import model_config_pb2 as mc

from ..errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    QueueFull,
    QueueTimeout,
    SkewlessError,
    Unavailable,
)
from .adaptive import AdaptiveController
from .precise_timer import PRECISE_BELOW_S, precise_timer
from .runner import BatchRunner

log = logging.getLogger(__name__)

REJECT = mc.ModelQueuePolicy.REJECT
DELAY = mc.ModelQueuePolicy.DELAY
# A queue delay shorter than this is skipped by a request that arrives to an idle batcher while no company
# has been seen for COMPANY_MEMORY_S: waiting could only gather a request that nobody is sending (one
# closed-loop client), and a sub-millisecond wait costs a wake-up more than it can save. Longer delays are
# always waited for, as Triton does.
SKIP_DELAY_BELOW_S = 0.001
COMPANY_MEMORY_S = 0.25


@dataclass(frozen=True)
class QueuePolicy:
    timeout_action: int = REJECT
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0

    @classmethod
    def from_proto(cls, p: mc.ModelQueuePolicy) -> QueuePolicy:
        return cls(p.timeout_action, p.default_timeout_microseconds, p.allow_timeout_override, p.max_queue_size)


class Pending:
    """One queued request (a plain slotted class: one is made per request on the hot path).

    No future of its own: its outcome goes to ``hook(result, error, cancelled)``, exactly once. It is dropped
    uncomputed once ``cancel()`` is called or the caller's own future, ``watch``, is cancelled (polled where it
    matters: a future per request, or a done-callback on the caller's, was measurable on the hot path)."""

    __slots__ = ("feeds", "rows", "outputs", "key", "hook", "enqueued", "level", "seq", "timeout_at",
                 "deadline", "delayed", "enqueued_ns", "cancelled", "watch")

    def __init__(self, feeds: dict[str, np.ndarray], rows: int, outputs: Sequence[str], key: tuple,
                 hook: Callable[[object, BaseException | None, bool], None], enqueued: float, level: int,
                 seq: int, timeout_at: float | None = None, deadline: float | None = None,
                 watch: asyncio.Future | None = None):
        self.feeds = feeds
        self.rows = rows
        self.outputs = outputs
        self.key = key
        self.hook: Callable[[object, BaseException | None, bool], None] | None = hook
        self.enqueued = enqueued  # loop clock
        self.level = level
        self.seq = seq
        self.timeout_at = timeout_at  # queue-policy timeout, loop clock
        self.deadline = deadline  # the client's gRPC deadline, loop clock
        self.delayed = False  # timed out under a DELAY policy: runs after everything else
        self.enqueued_ns = time.perf_counter_ns()
        self.cancelled = False
        self.watch = watch

    def is_cancelled(self) -> bool:
        return self.cancelled or (self.watch is not None and self.watch.cancelled())

    def cancel(self) -> bool:
        """Drop the request if it has not run yet (its hook then gets cancelled=True); like Future.cancel."""
        if self.hook is None:
            return False
        self.cancelled = True
        return True


def compatibility_key(feeds: dict[str, np.ndarray]) -> tuple:
    """Requests merge only when every input agrees on dtype and non-batch dimensions."""
    return tuple((name, arr.dtype.str, arr.shape[1:]) for name, arr in sorted(feeds.items()))


class DynamicBatcher:
    def __init__(self, runner: BatchRunner, name: str, label: str, batching: mc.ModelDynamicBatching,
                 max_batch_size: int, instances: int, adaptive: AdaptiveController | None = None,
                 fixed_shapes: bool = False, skip_idle_delay: bool = True):
        self.runner = runner
        self.name = name  # the model's name and label (name and version), for messages
        self.label = label
        # Every validated request of a model without variable dimensions has the same non-batch shapes and
        # dtypes, so all of them merge: no per-request compatibility key to compute.
        self.fixed_shapes = fixed_shapes
        self.adaptive = adaptive
        self.max_batch_size = max_batch_size
        self.preferred = sorted({int(s) for s in batching.preferred_batch_size if 0 < s <= max_batch_size})
        self.delay_s = batching.max_queue_delay_microseconds / 1e6
        self.skip_idle_delay = skip_idle_delay and 0 < self.delay_s < SKIP_DELAY_BELOW_S
        self._last_arrival = -math.inf  # time.perf_counter() of the latest arrival
        self._company_at = -math.inf  # when an arrival last found company: others queued, running or just arrived
        self.timers_armed = 0  # waits for a fuller batch that needed a timer (tests count them)
        self.preserve_ordering = batching.preserve_ordering
        self.levels = max(1, batching.priority_levels)
        self.default_level = batching.default_priority_level or (self.levels if batching.priority_levels else 1)
        if not 1 <= self.default_level <= self.levels:
            raise InvalidArgument(
                f"default_priority_level {self.default_level} is outside 1..{self.levels} (priority_levels)")
        default_policy = QueuePolicy.from_proto(batching.default_queue_policy)
        self.policies = {lvl: default_policy for lvl in range(1, self.levels + 1)}
        for lvl, policy in batching.priority_queue_policy.items():
            if 1 <= lvl <= self.levels:
                self.policies[lvl] = QueuePolicy.from_proto(policy)
        self.queues: dict[int, deque[Pending]] = {lvl: deque() for lvl in range(1, self.levels + 1)}
        self.delayed: deque[Pending] = deque()
        self.cap = max_batch_size  # the adaptive controller lowers this; never above max_batch_size
        self._free = instances  # instances not executing a batch
        self._freed = asyncio.Event()
        self._inflight = 0  # batches executing now
        self._running = 0  # requests in those batches
        self._arrived = asyncio.Event()
        self._queued_rows = 0  # rows of every queued request, all levels
        self._wake_rows = 1  # queued rows that wake the scheduler while it waits for a fuller batch
        self._earliest = math.inf  # no queued request expires before this (loop clock; may be early, never late)
        self._wake_at = math.inf  # when the scheduler, waiting for a fuller batch, wakes up by itself
        self._seq = itertools.count()
        self._next_release = 0
        self._finished: dict[int, tuple[Pending, object, BaseException | None]] = {}
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"batcher-{label}")
        self._closed = False

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    # -- submission ------------------------------------------------------------------------------------
    def submit(self, feeds: dict[str, np.ndarray], rows: int, outputs: Sequence[str], priority: int = 0,
               timeout_us: int | None = None, deadline: float | None = None, hook=None,
               watch: asyncio.Future | None = None):
        """Queue a request. Returns its future (cancel it to drop the request uncomputed); with ``hook``, the
        outcome goes to ``hook(result, error, cancelled)`` instead, and what is returned (the queue entry)
        only serves to ``cancel()`` it, as does cancelling ``watch`` (the caller's own future), if given."""
        if self._closed:
            raise Unavailable(f"model {self.label} is unloading")
        if priority < 0 or priority > self.levels or (priority and self.levels == 1 and priority != 1):
            raise InvalidArgument(
                f"priority {priority} is out of range for model '{self.name}': expected 0 (default) "
                f"to {self.levels}")
        level = priority or self.default_level
        policy = self.policies[level]
        queue = self.queues[level]
        if policy.max_queue_size and len(queue) >= policy.max_queue_size:
            raise QueueFull(f"Exceeds maximum queue size ({policy.max_queue_size}) of priority level {level} "
                              f"for model '{self.name}'")
        now = self._loop.time()
        timeout = policy.default_timeout_us
        if timeout_us is not None and policy.allow_timeout_override:
            timeout = timeout_us
        key = () if self.fixed_shapes else compatibility_key(feeds)
        future = None
        if hook is None:
            future = watch = self._loop.create_future()
            hook = functools.partial(_settle_hook, future)
        p = Pending(feeds, rows, outputs, key, hook, now, level, next(self._seq),
                    now + timeout / 1e6 if timeout else None, deadline, watch)
        queue.append(p)
        self._queued_rows += rows
        expires = min(p.timeout_at or math.inf, math.inf if deadline is None else deadline)
        if expires < self._earliest:
            self._earliest = expires
        # While the scheduler waits for a fuller batch it is woken once, when the batch is full, not at every
        # arrival; or sooner if this request expires before the scheduler would wake up by itself.
        if self._queued_rows >= self._wake_rows or expires < self._wake_at:
            self._arrived.set()
        return p if future is None else future

    # -- the scheduling loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while True:
                while not self._queued_rows:
                    self._arrived.clear()
                    await self._arrived.wait()
                while not self._free:
                    self._freed.clear()
                    await self._freed.wait()
                self._free -= 1
                batch = await self._form_batch()
                if not batch:
                    self._release()
                    continue
                self._inflight += 1
                self._running += len(batch)
                asyncio.get_running_loop().create_task(self._execute(batch))
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a dead batcher must not leave callers hanging
            log.exception("batcher of model %s died", self.label)
            self._fail_all(Internal(f"batcher of model {self.label} failed: {exc}"))

    def _ordered(self):
        for lvl in range(1, self.levels + 1):
            yield from self.queues[lvl]
        yield from self.delayed

    def _expire(self, now: float) -> None:
        """Drop cancelled requests, fail those past their deadline, apply queue timeouts."""
        earliest = math.inf
        for queue in (*self.queues.values(), self.delayed):
            if not queue:
                continue
            keep: deque[Pending] = deque()
            for p in queue:
                # The deadline first: gRPC cancels a call at its deadline, and that is a deadline drop, not
                # the client's cancel (request.Request tells the two apart for what was cancelled earlier).
                if p.deadline is not None and now >= p.deadline:
                    self._queued_rows -= p.rows
                    self._finish(p, None, DeadlineExceeded(
                        f"the request's deadline passed after {1e3 * (now - p.enqueued):.1f} ms in the queue "
                        f"of model '{self.name}'; it was not computed"))
                elif p.is_cancelled():
                    self._finish(p, None, None)
                    self._queued_rows -= p.rows
                elif p.timeout_at is not None and now >= p.timeout_at and not p.delayed:
                    if self.policies[p.level].timeout_action == DELAY:
                        p.delayed = True
                        self.delayed.append(p)
                    else:
                        self._queued_rows -= p.rows
                        self._finish(p, None, QueueTimeout(
                            f"Request timeout expired after {1e3 * (now - p.enqueued):.1f} ms in the queue of "
                            f"model '{self.name}'"))
                else:
                    keep.append(p)
                    if p.deadline is not None and p.deadline < earliest:
                        earliest = p.deadline
                    if p.timeout_at is not None and not p.delayed and p.timeout_at < earliest:
                        earliest = p.timeout_at
            queue.clear()
            queue.extend(keep)
        self._earliest = earliest

    def _gather(self) -> tuple[list[Pending], int]:
        """The head request plus every compatible request after it, in priority order, up to the cap.

        Cancelled requests met on the way are dropped here (they are never computed)."""
        batch: list[Pending] = []
        rows = 0
        key = None
        cancelled: list[Pending] = []
        for p in self._ordered():
            if p.is_cancelled():
                cancelled.append(p)
                continue
            if key is None:
                key = p.key
            elif p.key != key:
                continue
            if rows + p.rows > self.cap:
                if rows == 0:  # a request larger than an adaptive cap still runs, alone
                    batch, rows = [p], p.rows
                break
            batch.append(p)
            rows += p.rows
            if rows == self.cap:
                break
        for p in cancelled:
            self._remove(p)
            self._finish(p, None, None)
        return batch, rows

    def _cut_to_preferred(self, batch: list[Pending]) -> list[Pending]:
        """Triton prefers the largest preferred size the queue can fill; otherwise everything gathered."""
        rows, cut = 0, None
        for i, p in enumerate(batch):
            rows += p.rows
            if rows in self.preferred:
                cut = i + 1
        return batch[:cut] if cut else batch

    async def _form_batch(self) -> list[Pending]:
        loop = asyncio.get_running_loop()
        adaptive = self.adaptive
        waited = False
        while True:
            now = loop.time()
            if now >= self._earliest:
                self._expire(now)
            if adaptive is not None:
                self.cap = adaptive.cap
            batch, rows = self._gather()
            if not batch:
                return batch
            target = min(self.preferred[-1], self.cap) if self.preferred else self.cap
            head = batch[0]
            if adaptive is None:
                # The request's own perf_counter stamp: the loop clock has millisecond resolution under uvloop.
                wait_until = now + (head.enqueued_ns / 1e9 + self.delay_s - time.perf_counter())
                go = rows >= target or now >= wait_until
                wake_rows = target
            else:
                pc = time.perf_counter()
                wait = adaptive.wait_budget(head.enqueued, now) if adaptive.expects_company(pc) else 0.0
                wait_until = now + wait
                present = self._queued_rows + self._running
                population = adaptive.population(pc)
                go = rows >= target or now >= wait_until or present >= population
                if go and waited and pc - head.enqueued_ns / 1e9 >= 0.9 * adaptive.delay_s:  # same clock as pc
                    adaptive.after_full_wait(present, pc)
                # Also wake once everyone a recent full wait counted is here again: waiting on is idling.
                wake_rows = min(target, max(1, population - self._running))
            if go:
                chosen = self._cut_to_preferred(batch)
                for p in chosen:
                    self._remove(p)
                return chosen
            self._arrived.clear()
            self._wake_rows = wake_rows
            self._wake_at = min(wait_until, self._earliest)  # expiry does not wait for the next arrival
            try:
                await self._wait(self._wake_at)
                waited = True
            finally:
                self._wake_rows = 1
                self._wake_at = math.inf

    async def _wait(self, until: float) -> None:
        """Sleep until ``until`` (loop clock) or an arrival wakes the scheduler, whichever is first.

        A short wait is kept by the precise timer thread: the loop's own timers would round it up to a
        millisecond."""
        loop = asyncio.get_running_loop()
        timeout = until - loop.time()
        if timeout <= 0:
            return
        self.timers_armed += 1
        if timeout < PRECISE_BELOW_S:
            timer = precise_timer().call_later(timeout, loop, self._arrived.set)
        else:
            timer = loop.call_later(timeout, self._arrived.set)  # cheaper than asyncio.wait_for's extra task
        try:
            await self._arrived.wait()
        finally:
            timer.cancel()

    def _remove(self, p: Pending) -> None:
        (self.delayed if p.delayed else self.queues[p.level]).remove(p)
        self._queued_rows -= p.rows

    # -- execution -------------------------------------------------------------------------------------
    async def _execute(self, batch: list[Pending]) -> None:
        try:
            live = [p for p in batch if not p.is_cancelled()]
            for p in batch:
                if p.is_cancelled():
                    self._finish(p, None, None)
            if not live:
                return
            outputs = list(dict.fromkeys(name for p in live for name in p.outputs))
            dispatched = time.perf_counter_ns()
            try:
                results, thread_wait_ns, info = await self.runner.run(
                    [p.feeds for p in live], [p.rows for p in live], outputs)
            except SkewlessError as exc:
                for p in live:
                    self._finish(p, None, exc)
                return
            except Exception as exc:
                log.exception("batch execution failed for model %s", self.label)
                for p in live:
                    self._finish(p, None, Internal(f"batch execution failed: {exc}"))
                return
            if self.adaptive is not None:
                self.adaptive.observe((time.perf_counter_ns() - dispatched - thread_wait_ns) / 1e9)
                self.adaptive.observe_latency((time.perf_counter_ns() - min(p.enqueued_ns for p in live)) / 1e9)
                self.adaptive.on_done(time.perf_counter())
            index = None
            finish = self._finish if self.preserve_ordering else self._complete
            for p, per_request in zip(live, results, strict=True):
                if p.outputs != outputs:  # asked for a subset, or another order
                    index = index or {name: i for i, name in enumerate(outputs)}
                    per_request = [per_request[index[n]] for n in p.outputs]
                finish(p, (per_request, dispatched - p.enqueued_ns, info), None)
        finally:
            self._inflight -= 1
            self._running -= len(batch)
            self._release()

    def _release(self) -> None:
        self._free += 1
        self._freed.set()

    # -- the fast path ---------------------------------------------------------------------------------
    def arrive(self, now: float) -> bool:
        """Note an arrival (``now``: time.perf_counter()); every request, queued or not, feeds the adaptive
        mode's estimates of arrival rate and company. True when it may bypass the queue, because queueing
        could not change what runs: nothing waits, an instance is free, no delay would be spent waiting for
        company, and (with preserve_ordering) nothing is still running."""
        adaptive = self.adaptive
        company = adaptive is not None and adaptive.on_arrival(now, self._queued_rows > 0 or self._running > 0)
        if adaptive is None and self.skip_idle_delay:
            # Company: others queued or running, or an arrival within the delay of the previous one (so the
            # previous request, had it waited, would have shared its batch).
            if self._queued_rows or self._running or now - self._last_arrival < self.delay_s:
                self._company_at = now
            self._last_arrival = now
        if self._closed or self._queued_rows or not self._free:
            return False
        if self.preserve_ordering and self._inflight:
            return False
        if adaptive is not None:
            # Run at once unless other clients have lately been seen sending concurrently: then queue, so
            # that requests arriving in the same event-loop turn, or within the wait budget, share a batch.
            return not company
        return self.delay_s <= 0 or self.skips_delay(now)

    def skips_delay(self, now: float) -> bool:
        """Whether a request arriving to an idle batcher at ``now`` (time.perf_counter()) runs without
        waiting out the queue delay: the delay is sub-millisecond, skewless.skip_idle_delay is on (the
        default) and no company was seen lately."""
        return self.skip_idle_delay and now - self._company_at > COMPANY_MEMORY_S

    def run_alone(self, feeds: dict[str, np.ndarray], rows: int, outputs: Sequence[str]) -> asyncio.Future:
        """A batch of one, started at once: no queue entry, no batcher wake-up; and no task at all when the
        model is cheap enough to run inline. The instance is claimed before returning, so the next arrival
        in the same event-loop turn sees it busy and queues."""
        self._free -= 1
        self._inflight += 1
        self._running += 1
        if self.runner.cheap_enough(rows):
            future = asyncio.get_running_loop().create_future()
            try:
                start = time.perf_counter_ns()
                (outs,), queue_ns, info = self.runner.run_inline([feeds], [rows], list(outputs))
                if self.adaptive is not None:
                    elapsed = (time.perf_counter_ns() - start) / 1e9
                    self.adaptive.observe(elapsed)
                    self.adaptive.observe_latency(elapsed)
                future.set_result((outs, queue_ns, info))
            except Exception as exc:
                future.set_exception(exc)
            finally:
                self._alone_done(future)  # also tells the adaptive mode the request is done
            return future
        task = asyncio.ensure_future(self._alone(feeds, rows, outputs))
        task.add_done_callback(self._alone_done)  # runs even if the task is cancelled before it starts
        return task

    async def _alone(self, feeds: dict[str, np.ndarray], rows: int, outputs: Sequence[str]):
        start = time.perf_counter_ns()
        (outs,), thread_wait_ns, info = await self.runner.run([feeds], [rows], list(outputs))
        if self.adaptive is not None:
            self.adaptive.observe((time.perf_counter_ns() - start - thread_wait_ns) / 1e9)
            self.adaptive.observe_latency((time.perf_counter_ns() - start) / 1e9)
        return outs, thread_wait_ns, info

    def _alone_done(self, _future: asyncio.Future) -> None:
        self._inflight -= 1
        self._running -= 1
        self._release()
        if self.adaptive is not None:
            self.adaptive.on_done(time.perf_counter())

    def _finish(self, p: Pending, result, exc: BaseException | None) -> None:
        if not self.preserve_ordering:
            self._complete(p, result, exc)
            return
        self._finished[p.seq] = (p, result, exc)
        while self._next_release in self._finished:
            q, r, e = self._finished.pop(self._next_release)
            self._complete(q, r, e)
            self._next_release += 1

    def _complete(self, p: Pending, result, exc: BaseException | None) -> None:
        hook = p.hook
        if hook is None:  # completed already
            return
        p.hook = None  # exactly once
        cancelled = p.is_cancelled()
        try:
            hook(None if cancelled else result, None if cancelled else exc, cancelled)
        except Exception:  # the caller's completion must not take the batcher down
            log.exception("completing a request of model %s failed", self.label)

    def _fail_all(self, exc: BaseException) -> None:
        for p in list(self._ordered()):
            self._complete(p, None, exc)
        for q in self.queues.values():
            q.clear()
        self.delayed.clear()
        self._queued_rows = 0
        for p, _, _ in self._finished.values():
            self._complete(p, None, exc)
        self._finished.clear()

    async def close(self) -> None:
        """Stop taking requests; queued ones still run (the version retires only when they are done)."""
        self._closed = True
        while any(self.queues.values()) or self.delayed:
            await asyncio.sleep(0.005)
        self._task.cancel()


def _settle_hook(future: asyncio.Future, result, exc: BaseException | None, cancelled: bool) -> None:
    if not cancelled:
        settle(future, result, exc)


def settle(future: asyncio.Future, result, exc: BaseException | None) -> None:
    """Complete a future with a result or an exception, unless it is already done (e.g. cancelled)."""
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)

"""The challenger's way to run: one bounded queue for the server, drained only when the primaries are idle.

Mirrored requests arrive here after the primary's reply has been handed over. The dispatcher (a task on the
event loop) runs them on one thread of its own, and only while no primary request is in flight (two looks in
a row after a busy one) and the event-loop thread was less than ``loop_busy_max`` busy over the last second
(at saturation the in-flight count still touches zero between rounds of replies); otherwise they wait, and
they shed (counted) when the queue is full or they are older than ``max_age_s``. So under load the challenger gives way entirely, and it can never delay a primary batch:
primaries neither wait for it in any queue nor share its threads. On CPU the challenger's onnxruntime work runs
in a one-thread session of its own on a thread niced to 19 (``ModelRuntime.run_background``); the shadow
thread itself keeps normal priority because its Python work holds the GIL, and a niced GIL holder that the
kernel preempts would stall the event loop. That Python work (merge, compare) is held to ``cpu_share`` of wall
time over the last second: beyond that share mirrored requests wait, then shed. All of these judge this process
only; ``gate`` (host_idle.py) judges the host: while its idle CPU is under 10%, at most 5% of the sampled
requests are admitted at all (the rest shed before anything is built).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .compare import PairStats, compare_batch
from .divergence_log import Divergence, DivergenceLog
from .host_idle import BusyHostGate

if TYPE_CHECKING:
    from ..models.version import InFlightTotal, ModelVersion
    from .settings import ShadowSettings

log = logging.getLogger(__name__)

QUEUE = 256  # mirrored requests waiting, across all models
MAX_AGE_S = 2.0
MAX_BATCH_ROWS = 64  # mirrored requests to one challenger merge into batches up to this
IDLE_POLL_S = 0.005  # how often a waiting dispatcher looks again (each look costs the loop a wake-up)
IDLE_IN_FLIGHT = 0  # primaries in flight at or below which the challenger may run
IDLE_CHECKS = 1  # after a busy look, further idle looks (IDLE_POLL_S apart) before the challenger runs again
CPU_SHARE = 0.05  # of wall time, over BUDGET_WINDOW_S, that the shadow thread may be busy
BUDGET_WINDOW_S = 1.0
# The event-loop thread's CPU over the last BUDGET_WINDOW_S above which the challenger waits whatever the in-flight
# count says: past it the loop is the bottleneck (queueing grows steeply), and in a closed loop at saturation
# the in-flight count still touches zero between rounds of replies. Measured on the example MLP (2 cores): ~0.8
# at saturation with 64 clients, ~0.6 at half that rate, ~0.4 at a quarter.
LOOP_BUSY_MAX = 0.7


@dataclass(slots=True)
class Mirrored:
    """One sampled request: the primary's decoded inputs and its reply, for the challenger to redo."""

    shadow: Shadow
    primary: ModelVersion
    feeds: dict[str, np.ndarray]
    rows: int
    names: list[str]
    outputs: list[np.ndarray]
    request_id: str
    at: float  # time.monotonic() when mirrored
    time_ns: int


class Shadow:
    """One primary model's shadow: its settings, how to find the challenger, and the pair's counters."""

    def __init__(self, primary: str, settings: ShadowSettings,
                 resolve: Callable[[ShadowSettings], ModelVersion | None]):
        self.primary = primary
        self.settings = settings
        self.resolve = resolve  # the seam: a registry's `challenger` alias can stand in for MODEL[:VERSION]
        self.pairs: dict[int, PairStats] = {}  # by primary version
        self.log = DivergenceLog(settings.log_dir, primary) if settings.log_dir else None
        self._warned: set[str] = set()

    def pair(self, primary: ModelVersion) -> PairStats:
        """The counters of (this primary version, the challenger as configured)."""
        stats = self.pairs.get(primary.version)
        if stats is None:
            stats = self.pairs[primary.version] = PairStats(f"{primary.name}:{primary.version}",
                                                            str(self.settings.target))
        return stats

    def warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("shadow of '%s': %s", self.primary, message)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


class ShadowWorker:
    """The bounded queue, the dispatcher task and the low-priority thread every shadow shares."""

    def __init__(self, capacity: int = QUEUE, max_age_s: float = MAX_AGE_S, cpu_share: float = CPU_SHARE,
                 loop_busy_max: float = LOOP_BUSY_MAX, gate: BusyHostGate | None = None):
        self.capacity = capacity
        self.gate = gate if gate is not None else BusyHostGate()
        self.max_age_s = max_age_s
        self.cpu_share = cpu_share
        self.loop_busy_max = loop_busy_max
        self._loop_mark: tuple[float, float] | None = None  # (monotonic, loop thread CPU) at the window's start
        self.loop_busy = 0.0  # the event-loop thread's CPU share over the last full window
        self._spent: deque[tuple[float, float]] = deque()  # (ended at, busy seconds) of recent runs
        self._spent_s = 0.0
        self.queue: deque[Mirrored] = deque()
        self.total: InFlightTotal | None = None  # the server's in-flight count, from the first primary seen
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._running_requests = 0

    @property
    def full(self) -> bool:
        """Whether a newcomer is to be shed: checked before a mirrored request is built, which under load (most
        of them shed) saves building it. A busy host sheds all but ``gate.share`` of them."""
        return len(self.queue) >= self.capacity or not self.gate.admit()

    def offer(self, item: Mirrored) -> None:
        """On the event loop, after the primary's reply is handed over (and ``full`` checked): queue it."""
        self.queue.append(item)
        if self._task is None:
            self.total = item.primary.total
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._dispatch())
        self._wake.set()

    @staticmethod
    def shed(shadow: Shadow, primary: ModelVersion) -> None:
        shadow.pair(primary).shed += 1

    def _shed(self, item: Mirrored) -> None:
        self.shed(item.shadow, item.primary)

    def _loop_load(self, now: float) -> float:
        """On the event loop: its thread's CPU share over the last complete window (time.thread_time is this
        thread's own CPU clock; the shadow thread's work is not in it)."""
        mark = self._loop_mark
        if mark is None:
            self._loop_mark = (now, time.thread_time())
        elif now - mark[0] >= BUDGET_WINDOW_S:
            cpu = time.thread_time()
            self.loop_busy = (cpu - mark[1]) / (now - mark[0])
            self._loop_mark = (now, cpu)
        return self.loop_busy

    def _busy(self, now: float) -> bool:
        """Whether the challenger must wait: a primary request in flight, the event loop busy beyond
        ``loop_busy_max``, or the shadow thread's CPU share spent."""
        if self._loop_load(now) > self.loop_busy_max:  # first: keeps the loop's windows about a second long
            return True
        total = self.total
        if total is not None and total.n - self._running_requests > IDLE_IN_FLIGHT:
            return True
        spent = self._spent
        while spent and spent[0][0] < now - BUDGET_WINDOW_S:
            self._spent_s -= spent.popleft()[1]
        return self._spent_s >= self.cpu_share * BUDGET_WINDOW_S

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        q = self.queue
        quiet_checks = 0
        while True:
            if not q:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            while q and now - q[0].at > self.max_age_s:
                self._shed(q.popleft())
            if not q:
                continue
            if self._busy(now):
                quiet_checks = 0
                await asyncio.sleep(IDLE_POLL_S)
                continue
            if quiet_checks < IDLE_CHECKS:  # idle at consecutive looks, not in a gap between two batches
                quiet_checks += 1
                await asyncio.sleep(IDLE_POLL_S)
                continue
            head = q.popleft()
            batch = [head]
            rows = head.rows
            while q and q[0].shadow is head.shadow and q[0].primary is head.primary and q[0].names == head.names \
                    and rows + q[0].rows <= MAX_BATCH_ROWS:
                item = q.popleft()
                batch.append(item)
                rows += item.rows
            challenger = head.shadow.resolve(head.shadow.settings)
            if challenger is None:
                head.shadow.warn_once(f"challenger {head.shadow.settings.target} is not serving; mirrored "
                                      "requests are shed")
                for item in batch:
                    self._shed(item)
                continue
            challenger.enter()  # keeps it from closing under us; not a primary request, so not in `total`'s view
            self._running_requests += 1
            started = time.monotonic()
            try:
                await loop.run_in_executor(self._executor, _run, challenger, batch)
            except Exception:
                log.exception("shadow run on %s failed", challenger.label)
            finally:
                self._running_requests -= 1
                challenger.leave()
                ended = time.monotonic()
                self._spent.append((ended, ended - started))
                self._spent_s += ended - started

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self.queue:
            self._shed(item)
        self.queue.clear()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)


def _run(challenger: ModelVersion, batch: list[Mirrored]) -> None:
    """On the shadow thread: run the batch on the challenger, compare, count, and log what diverges."""
    head = batch[0]
    shadow = head.shadow
    label = f"{challenger.name}:{challenger.version}"
    stats = shadow.pair(head.primary)
    missing = [n for n in head.primary.inputs if n not in challenger.inputs]
    names = [n for n in head.names if n in challenger.outputs]
    if missing or not names:
        shadow.warn_once(f"challenger {label} does not take the same inputs or give the same outputs "
                         f"(missing inputs {missing}, shared outputs {names}); its runs count as errors")
        for _ in batch:
            stats.fail()
        return
    t0 = time.perf_counter()
    try:
        split, _ = challenger.run_batch([i.feeds for i in batch], [i.rows for i in batch], names,
                                        background=True)
    except Exception as exc:
        shadow.warn_once(f"challenger {label} failed: {exc}")
        for _ in batch:
            stats.fail()
        return
    latency = time.perf_counter() - t0
    time.sleep(0)  # let the event loop have the GIL between the run and the comparison
    tolerance = shadow.settings.tolerance
    index = [head.names.index(n) for n in names]
    primary_outs = [[item.outputs[i] for i in index] for item in batch]
    comparisons = compare_batch(names, primary_outs, split, [item.rows for item in batch])
    for item, p_outs, outs, c in zip(batch, primary_outs, split, comparisons, strict=True):
        if stats.record(c, latency, tolerance) and shadow.log is not None:
            shadow.log.offer(Divergence(
                item.time_ns, item.request_id, (item.primary.name, item.primary.version),
                (challenger.name, challenger.version), c.max_abs, c.agree, item.feeds,
                dict(zip(names, p_outs, strict=True)), dict(zip(names, outs, strict=True))))

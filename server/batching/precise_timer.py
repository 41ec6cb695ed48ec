"""Sub-millisecond wake-ups for the event loop, from one timer thread.

libuv (uvloop) timers have millisecond resolution: ``call_later(0.0002, ...)`` fires about a millisecond
later, so a 200 µs queue delay would cost five times what it says. Short waits are instead kept by one daemon
thread that sleeps on a condition with a timeout (the kernel's monotonic clock, microsecond granularity) and
posts the callback back to its loop with ``call_soon_threadsafe``, only when the wait was not cancelled first.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from asyncio import AbstractEventLoop
from collections.abc import Callable

# Waits shorter than this go to the timer thread; longer ones to the loop's own timers, whose millisecond
# rounding is then a small part of the wait.
PRECISE_BELOW_S = 0.002


class PreciseHandle:
    """One scheduled wake-up; ``cancel()`` it like an asyncio.TimerHandle."""

    __slots__ = ("when", "seq", "loop", "callback", "cancelled")

    def __init__(self, when: float, seq: int, loop: AbstractEventLoop, callback: Callable[[], object]):
        self.when = when  # time.perf_counter()
        self.seq = seq
        self.loop = loop
        self.callback = callback
        self.cancelled = False

    def __lt__(self, other: PreciseHandle) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        self.cancelled = True

    def _fire(self) -> None:  # on the loop: a cancel that came after the post still wins
        if not self.cancelled:
            self.callback()


class PreciseTimer:
    """A heap of wake-ups served by one thread, started on first use."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[PreciseHandle] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self.armed = 0  # wake-ups scheduled so far (for tests and diagnostics)

    def call_later(self, delay: float, loop: AbstractEventLoop, callback: Callable[[], object]) -> PreciseHandle:
        """Run ``callback`` on ``loop`` after ``delay`` seconds, unless the handle is cancelled first."""
        handle = PreciseHandle(time.perf_counter() + delay, next(self._seq), loop, callback)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="precise-timer", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, handle)
            self.armed += 1
            if self._heap[0] is handle:  # earlier than what the thread sleeps for
                self._cond.notify()
        return handle

    def _serve(self) -> None:
        heap = self._heap
        with self._cond:
            while True:
                while heap and heap[0].cancelled:
                    heapq.heappop(heap)
                if not heap:
                    self._cond.wait()
                    continue
                left = heap[0].when - time.perf_counter()
                if left > 0:
                    self._cond.wait(left)
                    continue
                handle = heapq.heappop(heap)
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody is waiting any more
                    handle.loop.call_soon_threadsafe(handle._fire)


_TIMER = PreciseTimer()


def precise_timer() -> PreciseTimer:
    """The process's timer thread (one serves every loop and model)."""
    return _TIMER

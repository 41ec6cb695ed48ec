"""One bounded background writer: the request path hands records over and never waits; one daemon thread
drains them in batches into a sink.

The served-feature log, drift monitoring, the shadow's divergence log, the prediction log and alert delivery
all need the same thing: a bounded buffer that drops (and counts) rather than blocks when full, one thread
that writes in batches (when enough is pending or the oldest record has waited long enough), ``flush`` and
``close`` that drain what is queued, and a sink error that is logged and counted without killing the thread.

The buffer is a deque: ``append``/``popleft`` are atomic under the GIL, so producers on any thread take no
lock. By default an offer wakes the writer (one notify, as a ``queue.Queue`` would). With ``poll`` set the
writer instead looks at the buffer every ``poll`` seconds and an offer wakes it only once a batch is waiting:
a record then costs the request path one append, no thread switch (the prediction log's measured design).
Concurrent producers may overshoot ``capacity`` by at most one record each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_STOP = object()


class BackgroundWriter(Generic[T]):
    """A bounded buffer of records and the one daemon thread that writes them.

    ``write(records)`` gets each batch in arrival order, on the writer thread. A batch is written once its
    total ``weight`` (default 1 per record) reaches ``batch`` (an int, or a function returning the current
    threshold), once its oldest record has waited ``max_delay`` seconds, and on ``flush``/``close``.
    ``tick(flush)`` runs on the writer thread after every wake-up (``flush`` True when asked by ``flush()``)
    for time-based work such as rotation; it returns the seconds until it wants to run again, or None.
    ``on_stop()`` runs last on the writer thread at ``close``, after the final write. An exception raised by
    any of them is logged under ``label`` and counted in ``errors``; the thread goes on (``weight`` and a
    ``batch`` function must not raise: they are plain arithmetic on the writer thread).
    """

    def __init__(self, name: str, write: Callable[[list[T]], None], *, capacity: int,
                 batch: int | Callable[[], int] = 1, max_delay: float = 0.0, poll: float | None = None,
                 weight: Callable[[T], int] | None = None, tick: Callable[[bool], float | None] | None = None,
                 on_stop: Callable[[], None] | None = None, label: str | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.name = name
        self.label = label or name
        self.capacity = capacity
        self.buffer: deque[T] = deque()
        self._write = write
        self._batch = batch
        self._max_delay = max_delay
        self._poll = poll
        self._wake_at = min(batch, capacity) if isinstance(batch, int) else capacity
        self._weight = weight
        self._tick = tick
        self._on_stop = on_stop
        self._wake = threading.Event()
        self._control: deque = deque()  # flush events and _STOP, handled ahead of the next drain
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.closed = False
        # statistics (updated without locks: racy by a count at worst)
        self.dropped = 0  # records refused: buffer full or writer closed
        self.written = 0  # records handed to ``write`` without an exception
        self.errors = 0  # exceptions raised by write, tick or on_stop

    def __len__(self) -> int:
        return len(self.buffer)

    @property
    def full(self) -> bool:
        return len(self.buffer) >= self.capacity

    @property
    def started(self) -> bool:
        return self._thread is not None

    # -- producers: any thread, never blocking ------------------------------------------------------------
    def offer(self, record: T) -> bool:
        """Queue a record; False (and counted in ``dropped``) when the buffer is full or the writer closed.
        Starts the thread at the first record."""
        buf = self.buffer
        n = len(buf)
        if n >= self.capacity or self.closed:
            self.dropped += 1
            return False
        buf.append(record)
        if self._thread is None:
            self.start()
        if self._poll is None or n + 1 >= self._wake_at:
            self._wake.set()
        return True

    def start(self) -> None:
        """Start the writer thread now (otherwise the first offer does). No-op once closed."""
        with self._lock:
            if self._thread is None and not self.closed:
                self._start_locked()

    def _start_locked(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    # -- control: blocking, off the event loop -----------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Write everything queued so far and run ``tick(True)``; False if that did not finish in ``timeout``
        seconds or the writer is closed."""
        done = threading.Event()
        with self._lock:  # ordered with close's stop: a flush either precedes it or sees ``closed``
            if self.closed:
                return False
            if self._thread is None:
                self._start_locked()
            self._control.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new records, write what is queued, run ``on_stop`` and end the thread. True when the thread
        ended within ``timeout`` seconds (False: it is stuck in the sink; it stays a daemon). Idempotent."""
        with self._lock:
            self.closed = True
            thread = self._thread
            if thread is None:
                if not self.buffer:
                    return True
                self._start_locked()  # records queued before the thread ever ran: write them too
                thread = self._thread
            if thread.is_alive():
                self._control.append(_STOP)
        self._wake.set()
        thread.join(timeout)
        return not thread.is_alive()

    # -- the writer thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        buf, control, wake = self.buffer, self._control, self._wake
        weigh = self._weight
        threshold = self._batch if callable(self._batch) else (lambda: self._batch)
        pending: list[T] = []
        pending_weight = 0
        first = 0.0  # monotonic time the oldest pending record was taken
        due: float | None = None  # when tick wants to run again
        while True:
            timeout = self._poll
            if pending or due is not None:
                now = time.monotonic()
                for deadline in (first + self._max_delay if pending else None, due):
                    if deadline is not None:
                        left = max(0.0, deadline - now)
                        timeout = left if timeout is None else min(timeout, left)
            wake.wait(timeout)
            wake.clear()
            asked = [control.popleft() for _ in range(len(control))]  # before draining: what preceded is in
            now = time.monotonic()
            for _ in range(len(buf)):
                record = buf.popleft()
                if not pending:
                    first = now
                pending.append(record)
                pending_weight += weigh(record) if weigh is not None else 1
                if pending_weight >= threshold():
                    self._flush_pending(pending)
                    pending, pending_weight = [], 0
            if pending and (asked or time.monotonic() - first >= self._max_delay):
                self._flush_pending(pending)
                pending, pending_weight = [], 0
            stop = _STOP in asked
            if self._tick is not None and not stop:
                due = self._guarded("tick", self._tick, any(a is not _STOP for a in asked))
                due = None if due is None else time.monotonic() + due
            if stop and self._on_stop is not None:
                self._guarded("closing", self._on_stop)
            for a in asked:
                if a is not _STOP:
                    a.set()
            if stop:
                return

    def _flush_pending(self, records: list[T]) -> None:
        try:
            self._write(records)
        except Exception:
            self.errors += 1
            log.exception("%s failed on %d records; they are lost", self.label, len(records))
        else:
            self.written += len(records)

    def _guarded(self, what: str, fn: Callable, *args):
        try:
            return fn(*args)
        except Exception:
            self.errors += 1
            log.exception("%s failed (%s)", self.label, what)
            return None

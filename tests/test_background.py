"""The bounded background writer (server/background.py): bounds, drops, batching, flush, close, sink errors.

No timing is asserted: a writer is held still with an Event inside its sink, and waits are bounded polls.
"""

from __future__ import annotations

import logging
import threading

import pytest
from helpers import wait_until

from skewless.server.background import BackgroundWriter


class Sink:
    """Records each batch; can be held (blocks inside write) and made to raise."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_on: set = set()
        self.threads: set[str] = set()

    def __call__(self, items: list) -> None:
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        assert self.release.wait(30)
        if self.fail_on & set(items):
            raise RuntimeError("sink broke")
        self.batches.append(list(items))

    @property
    def items(self) -> list:
        return [x for b in self.batches for x in b]


def test_a_full_buffer_drops_and_counts_without_blocking():
    sink = Sink()
    w = BackgroundWriter("bg-test", sink, capacity=3)
    w.start = lambda: None  # no thread: nothing leaves the buffer
    assert [w.offer(i) for i in range(5)] == [True, True, True, False, False]
    assert len(w) == 3 and w.full and w.dropped == 2 and not w.started
    del w.start
    assert w.close(10)  # records queued before the thread ever ran are still written
    assert sink.items == [0, 1, 2] and w.written == 3
    assert not w.offer(9) and w.dropped == 3  # closed: refused and counted


def test_a_held_sink_fills_the_buffer_then_everything_queued_is_written_in_order():
    sink = Sink()
    sink.release.clear()
    w = BackgroundWriter("bg-test", sink, capacity=4)
    assert w.offer("a")
    assert sink.entered.wait(10)  # the writer holds "a" inside the sink
    results = [w.offer(i) for i in range(10)]
    assert results == [True] * 4 + [False] * 6 and w.dropped == 6
    sink.release.set()
    assert w.flush(10)
    assert sink.items == ["a", 0, 1, 2, 3] and len(w) == 0
    assert w.close(10)


def test_batches_by_weight_and_flush_writes_what_is_pending():
    sink = Sink()
    ticks: list[bool] = []

    def tick(flush: bool) -> None:
        ticks.append(flush)

    w = BackgroundWriter("bg-test", sink, capacity=100, batch=10, max_delay=3600.0, weight=lambda x: x, tick=tick)
    for x in (4, 5, 1, 2):  # 4+5+1 reaches 10: one batch; 2 waits (a long max_delay)
        assert w.offer(x)
    wait_until(lambda: sink.batches, 10, "the full batch")
    assert sink.batches == [[4, 5, 1]]
    assert w.flush(10)  # the pending 2 is written and tick hears the flush
    assert sink.batches == [[4, 5, 1], [2]] and ticks[-1] is True
    assert w.close(10) and w.written == 4


def test_max_delay_writes_a_batch_that_never_fills():
    sink = Sink()
    w = BackgroundWriter("bg-test", sink, capacity=10, batch=1000, max_delay=0.05)
    w.offer("x")
    wait_until(lambda: sink.items == ["x"], 10, "the aged batch")
    assert w.close(10)


def test_polling_writer_drains_without_being_woken_per_record():
    sink = Sink()
    w = BackgroundWriter("bg-poll", sink, capacity=100, batch=50, poll=0.02)
    for i in range(3):
        w.offer(i)
    wait_until(lambda: sink.items == [0, 1, 2], 10, "the polled records")
    assert w.close(10) and sink.threads == {"bg-poll"}


def test_a_polling_writer_is_woken_only_by_a_full_batch():
    """The prediction log's design: a record costs its producer an append, not a thread wake-up."""
    polled = BackgroundWriter("bg-poll", Sink(), capacity=100, batch=3, poll=3600.0)
    woken = BackgroundWriter("bg-wake", Sink(), capacity=100)
    for w in (polled, woken):
        w.start = lambda: None  # no thread, so nothing clears the wake-up
        w.offer(1)
    assert not polled._wake.is_set() and woken._wake.is_set()
    polled.offer(2)
    assert not polled._wake.is_set()
    polled.offer(3)  # a batch is waiting: worth waking for
    assert polled._wake.is_set()


def test_a_sink_error_is_logged_and_counted_and_the_thread_goes_on(caplog):
    sink = Sink()
    sink.fail_on = {"bad"}
    stops: list[str] = []

    def tick(flush: bool) -> float | None:
        if flush:
            raise ValueError("tick broke")
        return None

    w = BackgroundWriter("bg-test", sink, capacity=10, tick=tick, on_stop=lambda: stops.append("stop"),
                         label="test writer")
    with caplog.at_level(logging.ERROR, logger="skewless.server.background"):
        w.offer("bad")
        w.offer("good")
        assert w.flush(10)
    assert sink.items == ["good"] and w.written == 1 and w.errors == 2  # the write and the flushing tick
    messages = [r.getMessage() for r in caplog.records]
    assert any("test writer failed on 1 records" in m for m in messages)
    assert any("test writer failed (tick)" in m for m in messages)
    w.offer("after")
    assert w.close(10) and sink.items == ["good", "after"] and stops == ["stop"]


def test_close_is_idempotent_and_reports_a_stuck_sink():
    sink = Sink()
    sink.release.clear()
    w = BackgroundWriter("bg-stuck", sink, capacity=10)
    w.offer(1)
    assert sink.entered.wait(10)
    assert w.close(0.05) is False  # still inside the sink
    assert not w.flush(0.05)  # closed
    sink.release.set()
    wait_until(lambda: w.close(0.5), 10, "the writer to stop")
    assert w.close(0) and sink.items == [1]
    assert not any(t.name == "bg-stuck" for t in threading.enumerate())


def test_a_writer_never_started_closes_at_once():
    w = BackgroundWriter("bg-idle", Sink(), capacity=1)
    assert w.close(0) and not w.started


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        BackgroundWriter("bg", Sink(), capacity=0)

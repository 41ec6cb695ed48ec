"""Per-model-version statistics in Triton's vocabulary (what ModelStatistics reports), plus the latency and
batch-size histograms and failure reasons the metrics endpoint exposes.

Updated only from the event loop thread, so plain integer additions need no lock. This is the hot path's
only contact with telemetry: the telemetry module reads these figures when it is scraped or exports, so a
request costs a few integer additions whether or not anyone is watching (an OpenTelemetry instrument's
record() measured ~7 us a call, several times the budget for all of them).
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from dataclasses import dataclass, field

from ..errors import SkewlessError

# Histogram bucket upper bounds: latencies resolve 50 us ... 10 s (in ns); batch sizes in powers of two.
LATENCY_BOUNDS_NS = tuple(int(us * 1000) for us in (
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000))
BATCH_SIZE_BOUNDS = tuple(1 << i for i in range(17))
# Why requests failed (SkewlessError.reason, or cancelled), mapped to Triton's nv_inference_request_failure
# reasons: REJECTED (queue full or timed out in it), CANCELED, BACKEND (the model failed), OTHER.
TRITON_REASONS = {"rejected": "REJECTED", "shed": "REJECTED", "cancelled": "CANCELED", "backend": "BACKEND",
                  "deadline": "OTHER", "other": "OTHER"}


def failure_reason(exc: BaseException | None) -> str:
    """Why a request failed, for the statistics (TRITON_REASONS' keys): a domain error says."""
    if isinstance(exc, SkewlessError):
        return exc.reason
    return "cancelled" if isinstance(exc, asyncio.CancelledError) else "other"


class Histogram:
    """Cumulative bucket counts over fixed upper bounds (the last bucket is +Inf) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bucket i holds bounds[i-1] < value <= bounds[i]
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchDurations:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    last_inference_ms: int = 0
    inference_count: int = 0  # rows of requests that succeeded (Triton's: a request that failed or was
    # cancelled while its batch computed is not counted, though the model ran its rows: see executed_rows)
    executed_rows: int = 0  # rows the model computed, whatever became of their requests
    execution_count: int = 0  # model executions (one per batch)
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    by_batch_size: dict[int, BatchDurations] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # by reason (TRITON_REASONS' keys)
    request_hist: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS_NS))  # successful requests
    queue_hist: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS_NS))
    compute_hist: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS_NS))  # per execution
    batch_hist: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BOUNDS))

    def record_execution(self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One model execution serving ``requests`` requests with ``batch_size`` rows in all."""
        self.execution_count += 1
        self.executed_rows += batch_size
        self.last_inference_ms = int(time.time() * 1000)
        # Triton charges each request the durations of the execution it was part of.
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        b = self.by_batch_size.get(batch_size)
        if b is None:
            b = self.by_batch_size[batch_size] = BatchDurations()
        b.compute_input.add(input_ns)
        b.compute_infer.add(infer_ns)
        b.compute_output.add(output_ns)
        self.compute_hist.observe(input_ns + infer_ns + output_ns)
        self.batch_hist.observe(batch_size)

    def record_request(self, ok: bool, total_ns: int, queue_ns: int = 0, reason: str = "other",
                       rows: int = 0) -> None:
        """One completed request of ``rows`` rows; ``reason`` says why a failed one failed."""
        if ok:  # once per request: the additions are spelled out rather than made through Duration.add
            self.inference_count += rows
            success, queue = self.success, self.queue
            success.count += 1
            success.ns += total_ns
            queue.count += 1
            queue.ns += queue_ns
            self.request_hist.observe(total_ns)
            self.queue_hist.observe(queue_ns)
        else:
            self.fail.add(total_ns)
            self.failures[reason] = self.failures.get(reason, 0) + 1

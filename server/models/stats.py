"""Per-model-version statistics in Triton's vocabulary (what ModelStatistics reports).

Updated only from the event loop thread, so plain integer additions need no lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


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
    inference_count: int = 0  # rows (batch elements) inferred
    execution_count: int = 0  # model executions (one per batch)
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    by_batch_size: dict[int, BatchDurations] = field(default_factory=dict)

    def record_execution(self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One model execution serving ``requests`` requests with ``batch_size`` rows in all."""
        self.execution_count += 1
        self.inference_count += batch_size
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

    def record_request(self, ok: bool, total_ns: int, queue_ns: int = 0) -> None:
        if ok:  # once per request: the additions are spelled out rather than made through Duration.add
            success, queue = self.success, self.queue
            success.count += 1
            success.ns += total_ns
            queue.count += 1
            queue.ns += queue_ns
        else:
            self.fail.add(total_ns)

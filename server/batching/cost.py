"""What a batch of a given size costs, measured: the batcher's inline-or-worker-thread decision."""

from __future__ import annotations

from collections import deque


class BatchCost:
    """Recent costs of batches per power-of-two size class (batch cost is a fixed part plus a per-row part,
    so one per-row figure would misjudge batches far from the sizes it was measured at), as CPU time of the
    thread that ran them: wall time also holds the thread's preemption on a busy machine (inline batches of
    the example MLP measured 5x their cost that way, and went to the worker threads, which cost more) and, in
    a worker, its waits for the GIL. Estimates take the minimum: a cold worker thread's first runs cost
    several times a warm run."""

    def __init__(self, inline_limit_ns: float, idle_limit_ns: float = 0.0):
        self.inline_limit_ns = inline_limit_ns
        self.idle_limit_ns = idle_limit_ns
        self._cpu_ns: dict[int, deque[int]] = {}

    def record(self, rows: int, cpu_ns: int) -> None:
        recent = self._cpu_ns.get(rows.bit_length())
        if recent is None:
            recent = self._cpu_ns[rows.bit_length()] = deque(maxlen=8)
        recent.append(cpu_ns)

    def _estimate_ns(self, size_class: int) -> float | None:
        recent = self._cpu_ns.get(size_class)
        return min(recent) if recent else None

    def estimate_ns(self, rows: int) -> float | None:
        """The CPU time a batch of ``rows`` is expected to take: the minimum recently measured at its size
        class, else a smaller size class scaled up by the row ratio (an over-estimate); None if neither."""
        size_class = rows.bit_length()
        cost = self._estimate_ns(size_class)
        if cost is None:
            smaller = [c for c in self._cpu_ns if c < size_class]
            if not smaller:
                return None
            c = max(smaller)
            cost = self._estimate_ns(c) * (1 << (size_class - c))
        return cost

    def cheap_enough(self, rows: int, idle: bool = False) -> bool:
        """Run on the event loop when the batch is expected to take less than the hand-off to a worker
        thread costs (~100 us of CPU, measured, plus its latency; default limit 250 us): the example MLP's
        batches of 1 to 64 rows take 8-90 us warm. ``idle`` (no other request in flight on the server)
        raises the limit to ``idle_limit_ns``: with nobody else to serve, a stalled loop delays no one, and
        the hand-off there and back (two thread wake-ups) is what a lone client waits for. Anything slower,
        or not yet measured at this size, runs in the model's worker threads and never stalls the loop."""
        cost = self.estimate_ns(rows)
        if cost is None:
            return False
        return cost < (max(self.inline_limit_ns, self.idle_limit_ns) if idle else self.inline_limit_ns)

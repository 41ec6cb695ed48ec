"""SLO-adaptive batching: AIMD on the batch-size cap (as in Clipper) plus a delay that only waits when the
measured arrival rate says another request will come in time.

Enabled per model by the config parameter ``skewless.latency_slo_ms`` (and optionally
``skewless.latency_slo_percentile``, default 99). What AIMD watches is the compute time of a batch, as
Clipper does: end-to-end latency also holds queueing, which a smaller batch makes worse, not better. A
request can wait for the batch ahead of it and then run in its own, so a batch gets half the objective.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from skewless.protos import model_config_pb2 as mc

from .config import parameter
from .errors import ModelLoadError

SLO_PARAMETER = "skewless.latency_slo_ms"
PERCENTILE_PARAMETER = "skewless.latency_slo_percentile"


class AdaptiveController:
    """Shrinks the batch cap fast when the observed percentile breaks the objective, grows it slowly
    while there is headroom, and advises the batcher whether waiting for a fuller batch can pay."""

    def __init__(self, slo_s: float, percentile: float, max_batch_size: int, max_delay_s: float,
                 window: int = 64, min_samples: int = 8):
        self.slo_s = slo_s
        self.percentile = percentile
        self.max_batch_size = max_batch_size
        # Wait only within the delay the config allows, and never longer than a quarter of the objective.
        # Waiting by itself was measured to lengthen p99 on a transport-bound model (the example MLP), so the
        # mode adds no delay of its own.
        self.max_delay_s = min(max_delay_s, slo_s / 4)
        self.cap = max_batch_size
        self.window: deque[float] = deque(maxlen=window)
        self.min_samples = min_samples
        self._since_adjust = 0
        self._arrival_rate = 0.0  # requests per second, exponentially weighted
        self._last_arrival: float | None = None
        self.adjustments = 0

    @classmethod
    def from_config(cls, cfg: mc.ModelConfig) -> AdaptiveController | None:
        raw = parameter(cfg, SLO_PARAMETER)
        if raw is None:
            return None
        try:
            slo_ms = float(raw)
            pct = float(parameter(cfg, PERCENTILE_PARAMETER, "99"))
        except ValueError:
            raise ModelLoadError(
                f"config parameters '{SLO_PARAMETER}' and '{PERCENTILE_PARAMETER}' must be numbers") from None
        if not (slo_ms > 0 and 0 < pct < 100):
            raise ModelLoadError(f"'{SLO_PARAMETER}' must be > 0 and '{PERCENTILE_PARAMETER}' in (0, 100)")
        return cls(slo_ms / 1e3, pct, cfg.max_batch_size, cfg.dynamic_batching.max_queue_delay_microseconds / 1e6)

    def on_arrival(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = max(now - self._last_arrival, 1e-6)
            self._arrival_rate = 0.9 * self._arrival_rate + 0.1 / gap
        self._last_arrival = now

    def wait_budget(self, oldest_enqueued: float, now: float) -> float:
        """Seconds worth waiting for more requests: zero unless one is expected before the budget ends."""
        remaining = oldest_enqueued + self.max_delay_s - now
        if remaining <= 0 or self._arrival_rate * remaining < 1.0:
            return 0.0
        return remaining

    def observe(self, batch_compute_s: float) -> None:
        self.window.append(batch_compute_s)
        self._since_adjust += 1
        if self._since_adjust >= self.min_samples and len(self.window) >= self.min_samples:
            self._adjust()

    def _adjust(self) -> None:
        self._since_adjust = 0
        observed = float(np.percentile(np.fromiter(self.window, float), self.percentile))
        budget = self.slo_s / 2
        if observed > budget:
            self.cap = max(1, self.cap // 2)
            self.window.clear()  # judge the new cap on fresh samples only
        elif observed < 0.8 * budget and self.cap < self.max_batch_size:
            self.cap = min(self.max_batch_size, self.cap + max(1, self.max_batch_size // 32))
        else:
            return
        self.adjustments += 1

"""SLO-adaptive batching: AIMD on the batch-size cap (as in Clipper) plus a delay that only waits when other
clients are sending concurrently and the measured arrival rate says another request will come in time.

Enabled per model by the config parameter ``skewless.latency_slo_ms`` (and optionally
``skewless.latency_slo_percentile``, default 99). What AIMD watches is the compute time of a batch, as
Clipper does: end-to-end latency also holds queueing, which a smaller batch makes worse, not better. A
request can wait for the batch ahead of it and then run in its own, so a batch gets half the objective.

Why wait at all on a cheap model: over gRPC, most of a request's cost is the transport's wake-ups, and
requests answered together share them. Holding requests for a few milliseconds while others are arriving
was measured to halve the server's CPU per request on the example MLP (64 clients). How long is a second
AIMD loop: the wait budget (at most half the objective, or a smaller configured max_queue_delay) halves
when the observed percentile of in-server latency (queue + compute, per batch) breaks the objective because
of the wait, and grows while it stays well under. When the latency is an overloaded server's queue, the
wait stays: smaller batches would only add CPU per request.
When to stop waiting early: a closed loop of clients (unary callers, or streams with a request each in
flight) sends nothing more once every client waits for a reply, so a wait beyond that point only idles
the server. The count present at the end of a recent full wait estimates that population; once that many
are present again the batch goes at once (measured on the example MLP: 64 streams with one request each
ran at about 2x the messages/s, and 64 unary clients at ~14% more requests/s for the same CPU per
request). The estimate lapses after a quarter of a second, so a full wait now and then measures it afresh.
Why not always: a single closed-loop client would pay the whole wait on every request for nothing, so the
wait needs evidence of company: an arrival while another request is queued or running, or two arrivals
closer together than one client's round trip can be.
"""

from __future__ import annotations

from collections import deque

from skewless.protos import model_config_pb2 as mc

from ..parameters import read

SLO_PARAMETER = "skewless.latency_slo_ms"
PERCENTILE_PARAMETER = "skewless.latency_slo_percentile"
# An arrival this soon after the previous arrival or completion cannot come from one closed-loop client (its
# round trip through the transport alone is longer), so it is evidence of concurrent clients.
COMPANY_GAP_S = 50e-6
COMPANY_MEMORY_S = 0.1  # how long such evidence keeps the batcher willing to wait
POPULATION_TTL_S = 0.25  # how long a full wait's count of present requests is trusted


def percentile(values, pct: float) -> float:
    """numpy's default (linear) percentile of a few dozen floats, computed in Python: np.percentile costs
    ~20 us a call on a deque this size, and a lone client's request paid for it every eighth time (in its
    p99, before the reply went out); a sort of 64 floats costs a few us."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * pct / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class AdaptiveController:
    """Shrinks the batch cap fast when the observed percentile breaks the objective, grows it slowly
    while there is headroom, and advises the batcher whether waiting for a fuller batch can pay."""

    def __init__(self, slo_s: float, percentile: float, max_batch_size: int, max_delay_s: float,
                 window: int = 64, min_samples: int = 8):
        self.slo_s = slo_s
        self.percentile = percentile
        self.max_batch_size = max_batch_size
        # Wait at most half the objective, and no longer than a configured max_queue_delay; start at half that.
        self.max_delay_s = min(max_delay_s, slo_s / 2) if max_delay_s > 0 else slo_s / 2
        self.delay_s = self.max_delay_s / 2
        self.latencies: deque[float] = deque(maxlen=window)
        self._since_latency = 0
        self.cap = max_batch_size
        self.window: deque[float] = deque(maxlen=window)
        self.min_samples = min_samples
        self._since_adjust = 0
        self._arrival_rate = 0.0  # requests per second, exponentially weighted
        self._last_arrival: float | None = None
        self._company_at = -1e9  # when concurrent clients were last seen
        self._last_done = -1e9
        self._population = 0  # requests present (rows queued or running) at the end of the last full wait
        self._population_at = -1e9
        self.adjustments = 0

    @classmethod
    def from_config(cls, cfg: mc.ModelConfig) -> AdaptiveController | None:
        slo_ms = read(cfg, SLO_PARAMETER)
        if slo_ms is None:
            return None
        pct = read(cfg, PERCENTILE_PARAMETER)
        return cls(slo_ms / 1e3, pct, cfg.max_batch_size, cfg.dynamic_batching.max_queue_delay_microseconds / 1e6)

    def on_arrival(self, now: float, busy: bool = False) -> bool:
        """``now`` from a fine clock (time.perf_counter); ``busy``: another request was queued or running.
        Returns expects_company(now), which the batcher asks next."""
        if self._last_arrival is not None:
            gap = max(now - self._last_arrival, 1e-6)
            self._arrival_rate = 0.9 * self._arrival_rate + 0.1 / gap
            # Measured from the last completion too: requests handled one by one as they are read (a stream,
            # or several clients' requests in one event-loop turn) are apart by their own processing time.
            if now - max(self._last_arrival, self._last_done) < COMPANY_GAP_S:
                busy = True
        if busy:
            self._company_at = now
        self._last_arrival = now
        return self.expects_company(now)

    def on_done(self, now: float) -> None:
        """A request or batch completed (``now`` on on_arrival's clock)."""
        self._last_done = now

    def expects_company(self, now: float) -> bool:
        """Whether concurrent clients were seen lately (``now`` on the clock given to on_arrival)."""
        return now - self._company_at < COMPANY_MEMORY_S

    def wait_budget(self, oldest_enqueued: float, now: float) -> float:
        """Seconds worth waiting for more requests: zero unless one more is expected before the budget ends.
        The batcher asks only when expects_company() says other clients are sending."""
        remaining = oldest_enqueued + self.delay_s - now
        if remaining <= 0 or self._arrival_rate * remaining < 1.0:
            return 0.0
        return remaining

    def after_full_wait(self, rows: int, now: float) -> None:
        """A batch is cut after its oldest request waited the whole budget: ``rows`` were present then."""
        self._population = rows
        self._population_at = now

    def population(self, now: float) -> float:
        """How many rows a wait can expect to gather: the count at the end of a recent full wait. Once that
        many are present again, waiting longer only idles (in a closed loop everyone is waiting on us);
        infinite when unknown or stale, so that a full wait now and then measures it afresh."""
        if self._population < 2 or now - self._population_at > POPULATION_TTL_S:
            return float("inf")
        return self._population

    def observe(self, batch_compute_s: float) -> None:
        self.window.append(batch_compute_s)
        self._since_adjust += 1
        if self._since_adjust >= self.min_samples and len(self.window) >= self.min_samples:
            self._adjust()

    def observe_latency(self, seconds: float) -> None:
        """In-server latency of a batch's oldest request (queue + compute): the wait budget's AIMD signal."""
        self.latencies.append(seconds)
        self._since_latency += 1
        if self._since_latency < self.min_samples or len(self.latencies) < self.min_samples:
            return
        self._since_latency = 0
        observed = percentile(self.latencies, self.percentile)
        if observed > self.slo_s:
            # Shrink the wait only where the wait is what breaks the objective. Past that, latency is the
            # queue of an overloaded server, and smaller batches would cost more CPU per request and lengthen
            # it: the wait is kept.
            if observed - self.delay_s <= self.slo_s:
                self.delay_s /= 2
                self.adjustments += 1
            self.latencies.clear()
        elif observed < 0.7 * self.slo_s and self.delay_s < self.max_delay_s:
            self.delay_s = min(self.max_delay_s, self.delay_s + self.max_delay_s / 8)
            self.adjustments += 1

    def _adjust(self) -> None:
        self._since_adjust = 0
        observed = percentile(self.window, self.percentile)
        budget = self.slo_s / 2
        if observed > budget:
            self.cap = max(1, self.cap // 2)
            self.window.clear()  # judge the new cap on fresh samples only
        elif observed < 0.8 * budget and self.cap < self.max_batch_size:
            self.cap = min(self.max_batch_size, self.cap + max(1, self.max_batch_size // 32))
        else:
            return
        self.adjustments += 1

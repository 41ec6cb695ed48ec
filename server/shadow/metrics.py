"""Shadow and canary metrics: declared here, registered with the meter the server gives, read from the
counters the traffic manager keeps (nothing is recorded per request)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation

from ..telemetry.spec import MetricSpec, by_name
from .compare import quantiles

if TYPE_CHECKING:
    from .canary import Canary

PAIR = ("primary", "challenger")
METRICS = (
    MetricSpec("skewless_shadow_mirrored_requests", "counter", "Requests the challenger ran (compared or failed)",
               PAIR),
    MetricSpec("skewless_shadow_shed_requests", "counter",
               "Mirrored requests dropped before running: queue full, too old or server busy", PAIR),
    MetricSpec("skewless_shadow_errors_requests", "counter",
               "Mirrored requests the challenger failed (never seen by the caller)", PAIR),
    MetricSpec("skewless_shadow_divergent_requests", "counter",
               "Mirrored requests whose outputs differ by more than the tolerance", PAIR),
    MetricSpec("skewless_shadow_agreement", "gauge",
               "Share of compared requests on which challenger and primary agree (argmax, 0.5 threshold, or "
               "equality)", PAIR),
    MetricSpec("skewless_shadow_abs_difference", "gauge",
               "Quantiles of |primary - challenger| per request (its largest), over the recent mirrored requests",
               (*PAIR, "output", "quantile")),
    MetricSpec("skewless_shadow_rel_difference", "gauge", "Quantiles of the relative difference per request",
               (*PAIR, "output", "quantile")),
    MetricSpec("skewless_shadow_challenger_latency_seconds", "gauge",
               "Quantiles of the challenger's compute time per mirrored batch", (*PAIR, "quantile"), "s"),
    MetricSpec("skewless_shadow_queue_depth", "gauge", "Mirrored requests waiting for idle primaries"),
    MetricSpec("skewless_canary_requests", "counter", "Requests served per canary arm and outcome",
               ("model", "arm", "version", "outcome")),
    MetricSpec("skewless_canary_weight", "gauge",
               "The candidate's share of unversioned requests now (0 after a rollback, 1 once promoted)",
               ("model", "candidate", "state")),
    MetricSpec("skewless_canary_rollbacks", "counter", "Automatic or commanded rollbacks of a canary to 0%",
               ("model", "candidate")),
)
SPEC = by_name(METRICS)


def register_metrics(meter: Any, manager: Any) -> None:
    """Register the shadow and canary instruments, read from ``manager`` (traffic.py's TrafficManager, which
    calls this) at each collection."""

    def pairs() -> Iterator[tuple[dict[str, str], Any]]:
        for traffic in list(manager.models.values()):
            shadow = traffic.shadow
            if shadow is not None:
                for p in list(shadow.pairs.values()):
                    yield {"primary": p.primary, "challenger": p.challenger}, p

    def counter(attr: str):
        def callback(_options: CallbackOptions) -> Iterator[Observation]:
            for attrs, p in pairs():
                yield Observation(getattr(p, attr), attrs)
        return [callback]

    for attr in ("mirrored", "shed", "errors", "divergent"):
        SPEC[f"skewless_shadow_{attr}_requests"].observe(meter, counter(attr))

    def agreement(_options: CallbackOptions) -> Iterator[Observation]:
        for attrs, p in pairs():
            if p.compared:
                yield Observation(p.agreement, attrs)

    SPEC["skewless_shadow_agreement"].observe(meter, [agreement])

    def diff(kind: str):
        def callback(_options: CallbackOptions) -> Iterator[Observation]:
            for attrs, p in pairs():
                for output, values in list(getattr(p, kind).items()):
                    for q, v in quantiles(values).items():
                        yield Observation(v, {**attrs, "output": output, "quantile": str(q)})
        return [callback]

    SPEC["skewless_shadow_abs_difference"].observe(meter, diff("abs_diff"))
    SPEC["skewless_shadow_rel_difference"].observe(meter, diff("rel_diff"))

    def latency(_options: CallbackOptions) -> Iterator[Observation]:
        for attrs, p in pairs():
            for q, v in quantiles(p.latency_s).items():
                yield Observation(v, {**attrs, "quantile": str(q)})

    SPEC["skewless_shadow_challenger_latency_seconds"].observe(meter, [latency])

    def queue_depth(_options: CallbackOptions) -> Iterator[Observation]:
        yield Observation(len(manager.worker.queue))

    SPEC["skewless_shadow_queue_depth"].observe(meter, [queue_depth])

    def canaries() -> Iterator[Canary]:
        for traffic in list(manager.models.values()):
            if traffic.canary is not None:
                yield traffic.canary

    def arms(_options: CallbackOptions) -> Iterator[Observation]:
        for traffic in list(manager.models.values()):
            c = traffic.canary
            if c is None:
                continue
            for arm_name, arm in c.arms.items():
                # the version that served the arm (the stable one may be "the highest other", never "0")
                version = c.candidate if arm_name == "candidate" else (arm.version or traffic.stable_version())
                attrs = {"model": c.model, "arm": arm_name, "version": str(version)}
                yield Observation(arm.served - arm.failed, {**attrs, "outcome": "success"})
                yield Observation(arm.failed, {**attrs, "outcome": "failure"})

    def weight(_options: CallbackOptions) -> Iterator[Observation]:
        for c in canaries():
            yield Observation(c.weight, {"model": c.model, "candidate": str(c.candidate), "state": c.state})

    def rollbacks(_options: CallbackOptions) -> Iterator[Observation]:
        for c in canaries():
            yield Observation(c.rollbacks, {"model": c.model, "candidate": str(c.candidate)})

    SPEC["skewless_canary_requests"].observe(meter, [arms])
    SPEC["skewless_canary_weight"].observe(meter, [weight])
    SPEC["skewless_canary_rollbacks"].observe(meter, [rollbacks])


__all__ = ["METRICS", "register_metrics"]

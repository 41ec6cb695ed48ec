"""Registry sync metrics: store health, cache disk use, pins and aliases; declared here, registered with the
meter the server gives. Rejected versions, rollbacks and swaps are skewless_model_events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation

from ..telemetry.spec import MetricSpec, by_name

if TYPE_CHECKING:
    from .sync import RegistryRepository

METRICS = (
    MetricSpec("skewless_registry_alias_version", "gauge",
               "The version each registry alias names (MLflow: champion, challenger), as of the last poll",
               ("model", "alias")),
    MetricSpec("skewless_registry_reachable", "gauge",
               "1 while the model registry answers, 0 during a failure episode"),
    MetricSpec("skewless_registry_failures", "counter",
               "Registry failure episodes (unreachable, slow or erroring), counted once each however many polls "
               "they last"),
    MetricSpec("skewless_registry_cache_bytes", "gauge", "Disk used by the registry's local version cache",
               unit="By"),
    MetricSpec("skewless_model_pinned", "gauge", "1 while a rollback pins the model (until skewless unpin)",
               ("model",)),
)
SPEC = by_name(METRICS)


def register_metrics(meter: Any, repo: RegistryRepository) -> None:
    """Register the registry instruments, read from ``repo`` at each collection."""

    def reachable(_options: CallbackOptions) -> Iterator[Observation]:
        yield Observation(1 if repo.health.reachable else 0)

    def failures(_options: CallbackOptions) -> Iterator[Observation]:
        yield Observation(repo.health.failures)

    def cache_bytes(_options: CallbackOptions) -> Iterator[Observation]:
        yield Observation(repo.cache.disk_bytes())

    def pinned(_options: CallbackOptions) -> Iterator[Observation]:
        for name in list(repo.sync_state):
            yield Observation(1 if repo.pinned(name) else 0, {"model": name})

    def aliases(_options: CallbackOptions) -> Iterator[Observation]:
        for name, st in list(repo.sync_state.items()):
            for alias, version in sorted(st.aliases.items()):
                yield Observation(version, {"model": name, "alias": alias})

    SPEC["skewless_registry_alias_version"].observe(meter, [aliases])
    SPEC["skewless_registry_reachable"].observe(meter, [reachable])
    SPEC["skewless_registry_failures"].observe(meter, [failures])
    SPEC["skewless_registry_cache_bytes"].observe(meter, [cache_bytes])
    SPEC["skewless_model_pinned"].observe(meter, [pinned])


__all__ = ["METRICS", "register_metrics"]

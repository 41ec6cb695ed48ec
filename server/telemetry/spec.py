"""A metric's declaration: name, type, labels and meaning, declared once by the module that reports it.

The declarations create the instruments (``observe``) and render the metrics reference
(telemetry/catalog.py's ``metrics_markdown``), so the documentation cannot drift from what is exported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

KINDS = ("counter", "gauge", "histogram")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: str  # counter, gauge or histogram
    description: str
    labels: tuple[str, ...] = ()
    unit: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name}: kind must be one of {KINDS}, got {self.kind!r}")

    def observe(self, meter: Any, callbacks: Iterable[Callable]) -> Any:
        """The observable instrument, read by ``callbacks`` at each collection."""
        if self.kind == "histogram":
            raise ValueError(f"metric {self.name}: histograms are built from bucket counts, not observed")
        create = meter.create_observable_counter if self.kind == "counter" else meter.create_observable_gauge
        return create(self.name, list(callbacks), unit=self.unit, description=self.description)


def by_name(specs: Iterable[MetricSpec]) -> dict[str, MetricSpec]:
    return {s.name: s for s in specs}


__all__ = ["MetricSpec", "by_name"]

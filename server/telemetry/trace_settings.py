"""Triton's trace extension (``TraceSetting``, ``/v2/trace/setting``) mapped onto the OpenTelemetry tracer.

Settings, server-wide or per model (a model's own value wins; clearing it falls back to the server's, and
clearing the server's to its start-up value), as Triton's strings:

- ``trace_level``: ``["OFF"]`` traces nothing; ``TIMESTAMPS`` (and ``TENSORS``, which exports the same spans:
  tensor contents are never exported) traces;
- ``trace_rate``: one in every N requests without a sampled caller traceparent is traced (0: none). Until it
  is set, the ``OTEL_TRACES_SAMPLER`` root sampler decides, and the reported rate is its ratio's inverse;
- ``trace_count``: traces left before tracing stops (-1: no limit); it counts down as traces are taken;
- ``log_frequency``: kept and reported for Triton's clients; spans stream to the collector in the OTLP
  exporter's batches, so there is no trace file to flush.

Per-model decisions need the model, which a gRPC request names only inside its body: arrival keeps the cheap
checks (everything OFF: no trace at all), and the model's rate and count are applied when the trace finishes
(``admit``), before any span is queued.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from ..errors import FailedPrecondition, InvalidArgument, Unimplemented
from .tracing import RequestTracer

LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
NUMBERS = ("trace_rate", "trace_count", "log_frequency")
SETTINGS = ("trace_level", *NUMBERS)
READ_ONLY = {"trace_file": "trace file location", "trace_mode": "trace mode"}


def _start_rate(tracer: RequestTracer | None) -> int:
    """The root sampler's ratio as Triton's 1-in-N rate (0: roots are never sampled)."""
    if tracer is None:
        return 0
    root = tracer.sampler._root if isinstance(tracer.sampler, ParentBased) else tracer.sampler
    if isinstance(root, TraceIdRatioBased):
        return round(1 / root.rate) if root.rate > 0 else 0
    return 0 if tracer.roots_never else 1


class TraceSettings:
    """The settings and the per-model sampling policy the tracer consults (``tracer.policy``)."""

    def __init__(self, tracer: RequestTracer | None):
        self.tracer = tracer
        self.start: dict[str, Any] = {"trace_level": ["TIMESTAMPS"] if tracer is not None else ["OFF"],
                                      "trace_rate": _start_rate(tracer), "trace_count": -1, "log_frequency": 0}
        self.server: dict[str, Any] = dict(self.start)
        self.models: dict[str, dict[str, Any]] = {}  # each model's own values
        self._seen: dict[str, int] = {}  # requests counted for a rate, per owner ("" = the server's setting)
        self.rate_set = False
        if tracer is not None:
            tracer.policy = self

    # -- the settings ------------------------------------------------------------------------------------
    def get(self, model: str = "") -> dict[str, list[str]]:
        """The effective settings (of ``model``, or the server's), as Triton reports them."""
        eff = {k: self._owner(model, k)[1] for k in SETTINGS}
        out = {"trace_level": list(eff["trace_level"]), "trace_mode": ["opentelemetry"]}
        out.update((k, [str(eff[k])]) for k in NUMBERS)
        return out

    def update(self, model: str, changes: Mapping[str, list[str] | None]) -> dict[str, list[str]]:
        """Apply ``changes`` (None or an empty list clears a value) to ``model``'s settings or, with ``model``
        empty, the server's. Everything is checked before anything changes."""
        parsed: dict[str, Any] = {}
        for key, values in changes.items():
            if key in READ_ONLY:
                raise Unimplemented(f"{READ_ONLY[key]} can not be updated through network protocol")
            if key not in SETTINGS:
                raise InvalidArgument(f"unknown trace setting '{key}': expected one of {', '.join(SETTINGS)}")
            parsed[key] = None if not values else _parse(key, values)
        if parsed and self.tracer is None:
            raise FailedPrecondition("tracing is off: start the server with OTEL_TRACES_EXPORTER=otlp (and "
                                     "OTEL_EXPORTER_OTLP_ENDPOINT) to change trace settings")
        target = self.models.setdefault(model, {}) if model else self.server
        for key, value in parsed.items():
            if value is None:
                if model:
                    target.pop(key, None)
                else:
                    target[key] = self.start[key]
            else:
                target[key] = value
            if key == "trace_rate":
                self._seen.pop(model if model else "", None)
                self.rate_set = self.rate_set or value is not None
        if model and not target:
            del self.models[model]
        self._refresh()
        return self.get(model)

    def _owner(self, model: str, key: str) -> tuple[str, Any]:
        own = self.models.get(model)
        if own is not None and key in own:
            return model, own[key]
        return "", self.server[key]

    def _refresh(self) -> None:
        tracer = self.tracer
        if tracer is not None:
            tracer.all_off = self.server["trace_level"] == ["OFF"] and all(
                m.get("trace_level", ["OFF"]) == ["OFF"] for m in self.models.values())
            tracer.rate_driven = self.rate_set

    # -- the per-request decision (at finish, once the model is known) ---------------------------------------
    def admit(self, model: str, root: bool) -> bool:
        """Whether a trace of ``model`` is exported: its level, its rate (roots only), its count."""
        if self._owner(model, "trace_level")[1] == ["OFF"]:
            return False
        if root and self.rate_set:
            owner, rate = self._owner(model, "trace_rate")
            seen = self._seen.get(owner, 0)
            self._seen[owner] = seen + 1
            if rate <= 0 or seen % rate:
                return False
        owner, left = self._owner(model, "trace_count")
        if left == 0:
            return False
        if left > 0:
            (self.models[owner] if owner else self.server)["trace_count"] = left - 1
        return True


def _parse(key: str, values: list[str]) -> Any:
    if key == "trace_level":
        levels = [v.upper() for v in values]
        for v in levels:
            if v not in LEVELS:
                raise InvalidArgument(f"unknown trace level '{v}': expected OFF, TIMESTAMPS or TENSORS")
        if "OFF" in levels and len(levels) > 1:
            raise InvalidArgument("Expect only one trace level 'OFF' is specified")
        return levels
    if len(values) != 1:
        raise InvalidArgument(f"'{key}' takes one value, got {len(values)}")
    try:
        n = int(values[0])
    except ValueError:
        raise InvalidArgument(f"Unable to parse '{key}', got: {values[0]}") from None
    low = -1 if key == "trace_count" else 0
    if not low <= n <= 2**32 - 1:
        raise InvalidArgument(f"Unable to parse '{key}', value is out of range [ {low}, {2**32 - 1} ], "
                              f"got: {values[0]}")
    return n


__all__ = ["TraceSettings"]

"""The hooks the request path offers side modules: the one interface through which they attach.

The path (frontend transports, dataplane, decode, encode, batching, models, features) never imports a side
module (shadow, lineage, fallback, alerts, audit, registry, telemetry). Each side module implements one of the
protocols below and is put in a model version's slot by a version hook registered at app wiring
(``ModelRepository.version_hooks``). The path calls a slot only past its ``None`` check, so an unused side
module costs one comparison per request:

- ``ModelVersion.traffic`` (:class:`Router`): the version an unversioned request is routed to, and an
  observer of its reply (shadow mirroring, canary arm counts);
- ``ModelVersion.lineage`` (:class:`ReplyObserver`): an observer of the reply (the prediction log);
- ``ModelVersion.fallback`` (:class:`FailureAnswer`): the reply's error branch, which may answer instead of
  the model (its outputs come back as :class:`FlaggedArrays`);
- ``ModelVersion.batch_observer`` (:data:`BatchObserver`): every computed batch (drift monitoring);
- ``ModelRepository.events`` (:data:`RepositoryEvent`): loads, swaps and unloads (the audit log).

Request tracing is handed to the transports as a :class:`Tracer`; a sampled request carries a :class:`Trace`.
Triton's trace and log settings reach the transports as a :class:`TraceControl` and a :class:`LogControl`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

# A request's completion, as the scheduler calls it: (outcome, error, cancelled). The outcome of a computed
# request is (output arrays, queue ns, the batch it ran in).
Complete = Callable[[Any, "BaseException | None", bool], None]
# (model inputs by name, output names, output arrays in that order) of one executed batch
BatchObserver = Callable[[dict[str, np.ndarray], list[str], list[np.ndarray]], None]
# (event, model name, versions before, versions after, extra fields): what the repository changed
RepositoryEvent = Callable[..., None]


class FlaggedArrays(list):
    """Output arrays a side module answered with instead of the model: the reply carries the response
    parameter ``fallback`` = ``reason``, and the statistics count the request as failed with ``failure``."""

    __slots__ = ("reason", "failure")

    def __init__(self, arrays: list[np.ndarray], reason: str, failure: str):
        super().__init__(arrays)
        self.reason = reason
        self.failure = failure  # the statistics' failure reason (models/stats.py)


class Router(Protocol):
    """A model's traffic control (shadow/traffic.py): routing of unversioned requests and a reply observer."""

    def route(self, mv: Any, params: Mapping[str, Any] | None, request_id: str,
              header_key: str | None = None) -> Any:
        """The version that serves an unversioned request (``mv``: the latest)."""

    def observe(self, mv: Any, feeds: dict, rows: int, names: list[str], params: Mapping[str, Any] | None,
                request_id: str, received_ns: int, complete: Complete, header_key: str | None = None) -> Complete:
        """``complete``, wrapped so the side work happens after the reply has been handed over."""

    def arm_of(self, version: int) -> str | None:
        """The canary arm a version serves as, or None."""


class ReplyObserver(Protocol):
    """Sees each reply after it is handed over (lineage/prediction_log.py)."""

    def observe(self, mv: Any, feeds: dict, rows: int, names: list[str], request_id: str, arm: str | None,
                complete: Complete) -> Complete: ...


class FailureAnswer(Protocol):
    """The reply's error branch (fallback/): a failure it covers is answered with :class:`FlaggedArrays`."""

    def reason_for(self, exc: BaseException | None) -> str | None:
        """Why it would answer for ``exc`` (None: the error reaches the client)."""

    def wrap(self, feeds: dict[str, np.ndarray], rows: int, names: list[str], complete: Complete) -> Complete:
        """``complete``, wrapped so that a covered failure completes with the fallback's outputs."""

    def answer(self, feeds: dict[str, np.ndarray], rows: int, names: list[str], complete: Complete,
               exc: BaseException) -> None:
        """Complete a request refused at arrival (overload, full queue) with the fallback's outputs."""


class Trace(Protocol):
    """A sampled request's trace (telemetry/tracing.py), finished once the reply is encoded."""

    enqueued_ns: int
    batch: Any

    def finish(self, mv: Any, request_id: str, received_ns: int, reply_start_ns: int, end_ns: int,
               error: BaseException | None = None) -> None: ...


class Tracer(Protocol):
    """Starts traces from a transport's headers; None (no tracer) costs the transports nothing."""

    def start_grpc(self, metadata: Any, transport: str = "grpc") -> Trace | None: ...

    def parent_grpc(self, metadata: Any) -> Any: ...

    def sample(self, parent: Any, transport: str) -> Trace | None: ...

    def start_http(self, headers: Mapping[str, str]) -> Trace | None: ...


# A label's row: ALL_ROWS when it gives one value per row of its request, else the row its one value is for.
ALL_ROWS = -1


class TraceControl(Protocol):
    """Triton's trace settings (telemetry/trace_settings.py), for the TraceSetting RPC and REST routes.
    Values are Triton's lists of strings; in ``update`` None (or an empty list) clears a setting."""

    def get(self, model: str = "") -> dict[str, list[str]]: ...

    def update(self, model: str, changes: Mapping[str, list[str] | None]) -> dict[str, list[str]]: ...


class LogControl(Protocol):
    """Triton's log settings (telemetry/log_settings.py): booleans, integers and strings by name."""

    def get(self) -> dict[str, Any]: ...

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]: ...


class LabelSink(Protocol):
    """Takes delayed labels for logged predictions (lineage/service.py), for the REST labels route: items are
    (request id, values, row); the answer has counts ``joined``, ``pending``, ``unknown``, ``duplicate`` and
    ``corrected``."""

    async def submit(self, name: str, items: list[tuple[str, list[float], int]]) -> Any: ...


__all__ = ["ALL_ROWS", "BatchObserver", "Complete", "FailureAnswer", "FlaggedArrays", "LabelSink", "LogControl",
           "RepositoryEvent", "ReplyObserver", "Router", "Trace", "TraceControl", "Tracer"]

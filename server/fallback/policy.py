"""Per-model decision-plane fallback: what a request is answered with when the model fails, times out or is shed.

Configured in config.pbtxt as the parameter ``skewless.fallback``, a JSON object::

    {"outputs": {"probabilities": [0.5, 0.5],                     # a constant per output (broadcast per row)
                 "label": {"rule": "where(input[:, 0] > 0, 1, 0)"}},  # or a rule over the raw inputs
     "on": ["failure", "timeout", "shed"]}                          # which failures (default: all three)

or ``{"model": "NAME[:VERSION]"}``: the request is run on that model (same inputs, the requested outputs),
resolved when needed; if it is not serving or fails too, the original error stands.

Every output the model declares needs a value. A reply served this way carries the response parameter
``fallback`` (the reason) on gRPC and HTTP, is counted (``skewless_fallback_total``) and logged once per
episode (the first fallback after the model last answered itself). Client errors (bad inputs, unknown
model, authentication) never fall back: the client must see them.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import (
    DeadlineExceeded,
    InstanceHung,
    Internal,
    ModelLoadError,
    Overloaded,
    QueueFull,
    QueueTimeout,
    SkewlessError,
)
from ..hooks import Complete, FlaggedArrays
from ..models.config import TensorSpec
from ..parameters import read
from .answer import completed
from .rule import Rule, RuleError

PARAMETER = "skewless.fallback"
REASONS = ("failure", "timeout", "shed")
FallbackArrays = FlaggedArrays  # outputs computed by a fallback: the reply is flagged with their reason
log = logging.getLogger(__name__)


def classify(exc: BaseException | None) -> str | None:
    """The fallback reason of a failure, or None for failures that must reach the client as they are."""
    if isinstance(exc, (QueueFull, Overloaded, QueueTimeout)):
        return "shed"
    if isinstance(exc, DeadlineExceeded):
        return "timeout"
    if isinstance(exc, (Internal, InstanceHung)):
        return "failure"
    if isinstance(exc, SkewlessError) or not isinstance(exc, Exception):
        return None  # client errors (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, …), cancellation, None
    return "failure"  # an unexpected error of the model's code path


class Fallback:
    """One version's fallback: checked at load, computed per failed request over its batch."""

    def __init__(self, label: str, doc: Any, inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec],
                 max_batch_size: int):
        where = f"model {label}: parameter '{PARAMETER}'"
        if not isinstance(doc, dict) or not (isinstance(doc.get("outputs"), dict) or "model" in doc):
            raise ModelLoadError(f"{where} must be a JSON object with 'outputs': {{output name: constant or "
                                 f"{{\"rule\": expression}}}}, or 'model': \"NAME[:VERSION]\"")
        unknown = set(doc) - {"outputs", "on", "model"}
        if unknown or "model" in doc and "outputs" in doc:
            raise ModelLoadError(f"{where}: unknown keys {sorted(unknown)} (expected 'outputs' or 'model', and "
                                 "'on')")
        on = doc.get("on", list(REASONS))
        if not isinstance(on, list) or not on or any(r not in REASONS for r in on):
            raise ModelLoadError(f"{where}: 'on' must be a list of {list(REASONS)}, got {on!r}")
        self.on = frozenset(on)
        self.label = label
        self.batched = max_batch_size > 0
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._episode = False
        self._inputs = inputs
        self._specs = outputs
        self._values: dict[str, np.ndarray | Rule] = {}
        self.model: tuple[str, str] | None = None  # another model to run instead
        self.resolve: Any = None  # (name, version) -> ModelVersion, set by FallbackHook
        if "model" in doc:
            name, _, version = str(doc["model"]).partition(":")
            if not name or version and not version.isdigit():
                raise ModelLoadError(f"{where}: 'model' must be NAME or NAME:VERSION, got {doc['model']!r}")
            self.model = (name, version)
            return
        missing = [n for n in outputs if n not in doc["outputs"]]
        extra = [n for n in doc["outputs"] if n not in outputs]
        if missing or extra:
            raise ModelLoadError(f"{where}: outputs {sorted(outputs)} each need a value; missing {missing}, "
                                 f"not outputs of the model {extra}")
        for name, value in doc["outputs"].items():
            spec = outputs[name]
            if spec.datatype.name == "BYTES":
                raise ModelLoadError(f"{where}: output '{name}' is BYTES; fallbacks give numeric outputs only")
            if isinstance(value, dict):
                if set(value) != {"rule"} or not isinstance(value["rule"], str):
                    raise ModelLoadError(f"{where}: output '{name}' must be a constant or {{\"rule\": \"…\"}}")
                try:
                    # numeric inputs only: BYTES columns stay wire bytes on the request path
                    numeric = {n for n, sp in inputs.items() if sp.datatype.name != "BYTES"}
                    self._values[name] = Rule(value["rule"], numeric)
                except RuleError as exc:
                    raise ModelLoadError(f"{where}: output '{name}': {exc}") from None
            else:
                try:
                    const = np.asarray(value, dtype=spec.datatype.numpy)
                    self._shape(spec, const, 1)
                except (ValueError, TypeError) as exc:
                    raise ModelLoadError(f"{where}: output '{name}' constant {value!r} does not fit "
                                         f"{spec.datatype.name} {list(spec.dims)}: {exc}") from None
                self._values[name] = const

    @classmethod
    def from_config(cls, mv: Any) -> Fallback | None:
        """The version's fallback, or None (no parameter: the data plane's only cost is that check)."""
        if PARAMETER not in mv.config.parameters:
            return None
        doc = read(mv.config, PARAMETER, f"model {mv.label}")
        return cls(mv.label, doc, mv.inputs, mv.outputs, mv.max_batch_size)

    def _shape(self, spec: TensorSpec, value: np.ndarray, rows: int) -> np.ndarray:
        dims = tuple(spec.dims)
        if -1 in dims:
            if value.ndim != len(dims) or any(d != -1 and d != s for d, s in zip(dims, value.shape, strict=True)):
                raise ValueError(f"shape {list(value.shape)} against dims {list(dims)}")
            dims = value.shape
        full = (rows, *dims) if self.batched else dims
        return np.broadcast_to(value, full)

    def status(self) -> dict[str, Any]:
        """Its kind (model, rule, constant), the failures it covers and its answers by reason (any thread)."""
        if self.model is not None:
            kind = "model " + ":".join(p for p in self.model if p)
        else:
            kind = "rule" if any(isinstance(v, Rule) for v in self._values.values()) else "constant"
        with self._lock:
            answers = dict(self.counts)
        return {"policy": kind, "on": sorted(self.on), "answers": answers, "in_episode": self._episode}

    def reason_for(self, exc: BaseException | None) -> str | None:
        reason = classify(exc)
        return reason if reason in self.on else None

    def compute(self, feeds: dict[str, np.ndarray], rows: int, names: list[str], reason: str,
                failure: str = "other") -> FallbackArrays:
        """The fallback outputs named ``names`` for a request of ``rows`` rows, in the declared dtypes/shapes."""
        out: list[np.ndarray] = []
        for name in names:
            spec = self._specs[name]
            value = self._values[name]
            if isinstance(value, Rule):
                computed = value.evaluate(feeds)
                if self.batched and computed.ndim == 1 and len(spec.dims) == 1 and spec.dims[0] == 1:
                    computed = computed[:, None]
                arr = np.ascontiguousarray(self._shape(spec, computed.astype(spec.datatype.numpy), rows))
            else:
                arr = np.ascontiguousarray(self._shape(spec, value, rows))
            out.append(arr)
        return self.served(out, reason, failure)

    def served(self, out: list[np.ndarray], reason: str, failure: str) -> FallbackArrays:
        """Count and (once per episode) log a fallback answer."""
        with self._lock:
            self.counts[reason] = self.counts.get(reason, 0) + 1
            first = not self._episode
            self._episode = True
        if first:
            log.warning("model %s: serving its fallback (%s) instead of model outputs; logged once until the "
                        "model answers again", self.label, reason)
        return FallbackArrays(out, reason, failure)

    def target(self, names: list[str]) -> Any:
        """The serving fallback model for a request of ``names``, or None (logged) when it cannot take it."""
        try:
            other = self.resolve(*self.model)
        except Exception as exc:
            log.error("model %s: fallback model %s is not serving: %s", self.label, ":".join(self.model), exc)
            return None
        theirs = {n: (s.datatype.name, tuple(s.dims)) for n, s in other.inputs.items()}
        ours = {n: (s.datatype.name, tuple(s.dims)) for n, s in self._inputs.items()}
        if theirs != ours or any(n not in other.outputs for n in names):
            log.error("model %s: fallback model %s does not take its inputs or give outputs %s", self.label,
                      other.label, names)
            return None
        return other

    def answered(self) -> None:
        """The model answered a request itself: a later fallback starts a new episode (and is logged)."""
        if self._episode:
            with self._lock:
                self._episode = False
            log.info("model %s answers again after serving fallbacks (%s so far)", self.label,
                     dict(self.counts))

    # -- the request path's FailureAnswer hook (server/hooks.py) ----------------------------------------------
    def wrap(self, feeds: dict[str, np.ndarray], rows: int, names: list[str], complete: Complete) -> Complete:
        """``complete``, wrapped so that a failure this fallback covers completes with its outputs."""
        return functools.partial(completed, self, feeds, rows, names, complete)

    def answer(self, feeds: dict[str, np.ndarray], rows: int, names: list[str], complete: Complete,
               exc: BaseException) -> None:
        """A request refused at arrival (overload, full queue): completed with the fallback's outputs."""
        completed(self, feeds, rows, names, complete, None, exc, False)


class FallbackHook:
    """The repository's version hook that gives each loading version its fallback (None unless configured);
    a fallback naming another model resolves it through ``resolve`` (the repository's ``get``) when needed."""

    def __init__(self, resolve: Callable[[str, str], Any]):
        self.resolve = resolve

    def attach(self, mv: Any) -> None:
        fallback = Fallback.from_config(mv)
        if fallback is not None and fallback.model is not None:
            fallback.resolve = self.resolve
        mv.fallback = fallback

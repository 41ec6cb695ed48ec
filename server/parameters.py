"""Model config parameters (``config.pbtxt``'s ``parameters`` map), declared once: name, type, default, bounds and
meaning, with the one parser that reads and checks them.

Triton's map holds strings::

    parameters { key: "skewless.drift_warn" value { string_value: "0.2" } }

Each area reads its own parameters with ``read(cfg, name, where)``, which returns the typed value (the
default when the key is absent) or raises ModelLoadError saying what was expected: a bad value fails the
model's load, never a request. ``parameters_markdown()`` renders the table for docs/reference. Checks that
tie two parameters together (warn below alert, a log rate that needs a directory) stay with the code they
configure. A ``skewless.*`` key declared nowhere is not refused (a config written for a later release still
loads) but logged with the names it is close to (``unknown``).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ModelLoadError

PREFIX = "skewless."
KINDS = ("bool", "int", "float", "str", "enum", "json")
_INF = math.inf


@dataclass(frozen=True)
class Parameter:
    """One model config parameter. ``lo``/``hi`` bound int and float values (``lo_open``/``hi_open``: the bound
    itself is refused); ``choices`` are an enum's values (``fold_case``: compared lower-cased, returned
    lower-cased); ``blank_is_unset``: an empty string reads as the default; ``check`` a further rule on the
    typed value, returning what is wrong with it or None."""

    name: str
    kind: str
    default: Any
    meaning: str
    area: str
    lo: float = -_INF
    hi: float = _INF
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    fold_case: bool = False
    blank_is_unset: bool = False
    check: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"parameter {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if (self.kind == "enum") != bool(self.choices):
            raise ValueError(f"parameter {self.name}: choices go with kind 'enum' and only with it")

    @property
    def bounded(self) -> bool:
        return self.lo != -_INF or self.hi != _INF

    def expected(self) -> str:
        """What a value must be, as error messages and the docs table say it."""
        if self.kind == "bool":
            return "0 or 1"
        if self.kind == "enum":
            return "one of " + ", ".join(f"'{c}'" for c in self.choices)
        if self.kind == "json":
            return "JSON"
        if self.kind == "str":
            return "a string"
        span = (f" in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
                if self.bounded else "")
        return f"a {self.kind}{span}"

    def parse(self, raw: str | None, where: str = "") -> Any:
        """The typed value of ``raw`` (the config's string; None: absent). Raises ModelLoadError."""
        if raw is None or (self.blank_is_unset and not raw.strip()):
            return self.default
        value = self._convert(raw, where)
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ModelLoadError(f"{_prefix(where)}config parameter '{self.name}' {problem}, got '{raw}'")
        return value

    def read(self, cfg: Any, where: str = "") -> Any:
        """The typed value of this parameter in ``cfg`` (a ModelConfig)."""
        params = cfg.parameters
        return self.parse(params[self.name].string_value if self.name in params else None, where)

    def _convert(self, raw: str, where: str) -> Any:
        if self.kind == "str":
            return raw
        if self.kind == "json":
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise ModelLoadError(f"{_prefix(where)}config parameter '{self.name}' is not JSON: {exc}") from None
        if self.kind == "bool":
            if raw in ("0", "1"):
                return raw == "1"
        elif self.kind == "enum":
            value = raw.lower() if self.fold_case else raw
            if value in self.choices:
                return value
        else:
            try:
                value = int(raw) if self.kind == "int" else float(raw)
            except ValueError:
                value = math.nan
            if value == value and (self.lo < value if self.lo_open else self.lo <= value) and (
                    value < self.hi if self.hi_open else value <= self.hi):
                return value
        raise ModelLoadError(f"{_prefix(where)}config parameter '{self.name}' must be {self.expected()}, "
                             f"got '{raw}'")


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


PARAMETERS: dict[str, Parameter] = {}


def declare(*params: Parameter) -> None:
    """Add declarations to the one table (a name declared twice is a mistake in the code)."""
    for p in params:
        if p.name in PARAMETERS:
            raise ValueError(f"parameter {p.name} is declared twice")
        PARAMETERS[p.name] = p


def read(cfg: Any, name: str, where: str = "") -> Any:
    """The typed value of the declared parameter ``name`` in ``cfg`` (a ModelConfig). Raises ModelLoadError."""
    return PARAMETERS[name].read(cfg, where)


def unknown(keys: Iterable[str]) -> list[str]:
    """One line for each ``skewless.*`` key that no declaration names, with the declared names it is close to."""
    ours = {name[len(PREFIX):]: name for name in PARAMETERS if name.startswith(PREFIX)}
    out = []
    for key in keys:
        if key.startswith(PREFIX) and key not in PARAMETERS:
            close = [ours[c] for c in difflib.get_close_matches(key[len(PREFIX):], ours, n=3, cutoff=0.8)]
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            out.append(f"config parameter '{key}' is not one skewless knows{hint}: it is ignored")
    return out


def parameters_markdown() -> str:
    """The declared parameters as Markdown tables, one per area (for docs/reference/model-parameters.md)."""
    by_area: dict[str, list[Parameter]] = {}
    for p in PARAMETERS.values():
        by_area.setdefault(p.area, []).append(p)
    out = []
    for area, params in by_area.items():
        out += [f"### {area}", "", "| Parameter | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
        out += [f"| `{p.name}` | {_cell(p.expected().removeprefix('a '))} | {_cell(_default_text(p))} | "
                f"{_cell(p.meaning)} |"
                for p in params]
        out.append("")
    return "\n".join(out)


def _default_text(p: Parameter) -> str:
    if p.default is None:
        return "(unset)"
    if isinstance(p.default, bool):
        return "1" if p.default else "0"
    if isinstance(p.default, float):
        return f"{p.default:g}"
    return f"'{p.default}'" if p.default == "" else str(p.default)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _prediction_reference(value: str) -> str | None:
    value = value.strip()
    if value.startswith("learn:"):
        try:
            n = int(value[6:])
        except ValueError:
            n = 0
        return None if n >= 1 else "must be 'auto', 'learn:N' with N >= 1, a file name or 'off'"
    return None if value else "is empty"


# -- Declarations, by area (the module each is read in) ----------------------------------------------------
_DRIFT = "Drift monitoring (telemetry/drift.py)"
declare(
    Parameter("skewless.drift", "bool", True, "0 switches drift monitoring off for the model", _DRIFT),
    Parameter("skewless.drift_warn", "float", 0.1, "PSI level of a warning (below skewless.drift_alert)", _DRIFT,
              lo=0.0, lo_open=True),
    Parameter("skewless.drift_alert", "float", 0.25, "PSI level of an alert", _DRIFT, lo=0.0, lo_open=True),
    Parameter("skewless.drift_window_rows", "int", 10_000,
              "rows in the sliding window; PSI is reported once half are in", _DRIFT, lo=1),
    Parameter("skewless.drift_sample_rate", "float", 1.0, "fraction of batches looked at", _DRIFT,
              lo=0.0, hi=1.0, lo_open=True),
    Parameter("skewless.drift_max_rows_per_s", "float", 2000.0,
              "rows kept per second at most (token bucket, 1 s burst)", _DRIFT, lo=0.0, lo_open=True),
    Parameter("skewless.drift_max_batches_per_s", "float", 20.0, "batches sampled per second at most", _DRIFT,
              lo=0.0, lo_open=True),
    Parameter("skewless.drift_interval_s", "float", 5.0, "PSI recomputed at most this often (seconds)", _DRIFT,
              lo=0.0),
    Parameter("skewless.drift_alpha", "float", 0.001,
              "a warn or alert level also needs the chi-square test against the reference to reject at this level (a "
              "window too small for the bins never alarms)", _DRIFT, lo=0.0, hi=1.0, lo_open=True, hi_open=True),
    Parameter("skewless.drift_queue", "int", 256,
              "sampled batches waiting for the drift worker; more are dropped and counted", _DRIFT, lo=1),
    Parameter("skewless.prediction_reference", "str", "auto",
              "reference of the prediction PSI: 'auto' (the version's drift_reference.json if shipped, else "
              "learn:1000), 'learn:N' (the first N sampled output rows after load), a JSON file in the version "
              "folder, or 'off'", _DRIFT, check=_prediction_reference),
)

_FEATURE_LOG = "Served-feature log (features/served_log.py)"
declare(
    Parameter("skewless.feature_log_rate", "float", 0.0,
              "fraction of requests whose raw and computed features are logged (0: off)", _FEATURE_LOG,
              lo=0.0, hi=1.0),
    Parameter("skewless.feature_log_dir", "str", None, "directory of the Parquet log (required when logging)",
              _FEATURE_LOG),
    Parameter("skewless.feature_log_queue", "int", 1024,
              "sampled batches waiting for the writer; more are dropped and counted", _FEATURE_LOG, lo=1),
    Parameter("skewless.feature_log_rotate_rows", "int", 1_000_000, "rows per file before the next one",
              _FEATURE_LOG, lo=1),
    Parameter("skewless.feature_log_rotate_seconds", "float", 5.0, "seconds per file before the next one: also the longest a logged row stays unreadable",
              _FEATURE_LOG, lo=0.001),
)

_VERSION = "Execution (models/version.py, models/runtime.py)"
declare(
    Parameter("skewless.inline_compute_us", "float", 250.0,
              "batches expected to compute faster than this (microseconds) run on the event loop", _VERSION),
    Parameter("skewless.idle_inline_us", "float", 2000.0,
              "while no other request is in flight on the server, batches expected to compute faster than this "
              "(microseconds) run on the event loop too, sparing a lone client the worker-thread hand-off; "
              "anything arriving meanwhile waits at most that long (0: off; CPU instances only)", _VERSION, lo=0.0),
    Parameter("skewless.instance_timeout_s", "float", 60.0,
              "watchdog: a batch running longer fails and its instance restarts (0: off)", _VERSION),
    Parameter("skewless.io_binding", "enum", "auto",
              "onnxruntime IOBinding path: 'auto' (on for KIND_GPU instances), '1' or '0'", _VERSION,
              choices=("auto", "0", "1")),
    Parameter("skewless.cuda_pinned_staging", "bool", False, "page-locked input staging on GPU instances",
              _VERSION),
)

_ORT = "onnxruntime session (Triton's onnxruntime backend names; models/runtime.py)"
declare(
    Parameter("intra_op_allow_spinning", "bool", None,
              "1: onnxruntime's pool threads spin, after each run too (burns cores the transport needs); "
              "0: they sleep between operators. Unset: skewless.intra_op_spinning decides", _ORT),
    Parameter("skewless.intra_op_spinning", "enum", "auto",
              "'bounded': pool threads spin between a run's operators and for skewless.intra_op_spin_us after "
              "it, then sleep (onnxruntime 1.26+); 'during_run': they sleep once the run returns; 'always' "
              "(onnxruntime's own ~40 ms spin after each run); 'never'; 'auto': bounded when the session has "
              "more than one intra-op thread (during_run before onnxruntime 1.26), else never", _ORT,
              choices=("auto", "bounded", "during_run", "always", "never")),
    Parameter("skewless.intra_op_spin_us", "int", 1000,
              "'bounded' spinning: how long pool threads keep spinning after a run for the next one "
              "(microseconds)", _ORT, lo=0),
    Parameter("intra_op_thread_count", "int", None,
              "intra-op threads per session (default: onnxruntime's, or cores / --workers)", _ORT),
    Parameter("inter_op_thread_count", "int", None, "inter-op threads; setting it runs operators in parallel",
              _ORT),
    Parameter("graph_optimization_level", "enum", None,
              "onnxruntime graph optimizations (default: from optimization.graph.level, else 'all')", _ORT,
              choices=("disable", "basic", "extended", "all"), fold_case=True),
    Parameter("cuda_use_tf32", "str", "0", "TF32 on CUDA instances ('1' to allow: it changes FP32 results)",
              _ORT),
    Parameter("cuda_cudnn_conv_algo_search", "str", None, "CUDA provider option, passed as is", _ORT),
    Parameter("cuda_gpu_mem_limit", "str", None, "CUDA provider option (bytes), passed as is", _ORT),
    Parameter("cuda_arena_extend_strategy", "str", None, "CUDA provider option, passed as is", _ORT),
    Parameter("cuda_do_copy_in_default_stream", "str", None, "CUDA provider option, passed as is", _ORT),
)

_BATCHING = "Adaptive batching (batching/adaptive.py)"
declare(
    Parameter("skewless.latency_slo_ms", "float", None,
              "latency objective that turns on SLO-adaptive batching (milliseconds)", _BATCHING,
              lo=0.0, lo_open=True),
    Parameter("skewless.latency_slo_percentile", "float", 99.0, "percentile the objective applies to",
              _BATCHING, lo=0.0, hi=100.0, lo_open=True, hi_open=True),
)

_DELAY = "Queue delay (batching/batcher.py)"
declare(
    Parameter("skewless.skip_idle_delay", "bool", True,
              "a max_queue_delay_microseconds under 1 ms is not waited out by a request arriving to an idle "
              "batcher when no other request was seen for 250 ms (0: always wait, as Triton does)", _DELAY),
)

_TRAFFIC = "Shadow traffic and canary (shadow/settings.py)"
declare(
    Parameter("skewless.shadow_model", "str", None,
              "MODEL or MODEL:VERSION receiving mirrored requests (no version: its latest)", _TRAFFIC),
    Parameter("skewless.shadow_rate", "float", 1.0, "fraction of requests mirrored", _TRAFFIC, lo=0.0, hi=1.0),
    Parameter("skewless.shadow_tolerance", "float", 1e-6,
              "largest |primary - challenger| before a sample counts as divergent", _TRAFFIC, lo=0.0),
    Parameter("skewless.shadow_log_dir", "str", "", "where divergent samples go as Parquet ('': not logged)",
              _TRAFFIC),
    Parameter("skewless.traffic_key", "str", "",
              "request parameter hashed for sampling and canary arms ('': the request id)", _TRAFFIC),
    Parameter("skewless.canary_version", "int", None, "the canary's candidate version", _TRAFFIC, lo=1,
              blank_is_unset=True),
    Parameter("skewless.canary_weight", "float", 0.05, "the candidate's share of requests", _TRAFFIC,
              lo=0.0, hi=1.0),
    Parameter("skewless.canary_window_s", "float", 30.0, "guardrails' sliding window (seconds)", _TRAFFIC,
              lo=0.0, lo_open=True),
    Parameter("skewless.canary_max_p99_ratio", "float", 2.0,
              "guardrail: candidate p99 latency over the stable arm's", _TRAFFIC, lo=1.0, lo_open=True),
    Parameter("skewless.canary_max_psi", "float", 0.25,
              "guardrail: PSI of the candidate's outputs against the stable arm's (breaches only when the "
              "chi-square test also rejects at the canary's alpha)", _TRAFFIC, lo=0.0, lo_open=True),
    Parameter("skewless.canary_alpha", "float", 0.01,
              "chance that an identical candidate is rolled back by the error-rate and drift tests, over all "
              "looks", _TRAFFIC, lo=0.0, hi=1.0, lo_open=True, hi_open=True),
)

_LINEAGE = "Prediction log and live quality (lineage/)"
declare(
    Parameter("skewless.prediction_log_rate", "float", None,
              "fraction of requests written to the prediction log (needs --prediction-log)", _LINEAGE,
              lo=0.0, hi=1.0),
    Parameter("skewless.score_output", "str", None, "output whose value quality metrics read (default: the first)",
              _LINEAGE),
    Parameter("skewless.score_index", "int", -1, "column of the score output (-1: the last)", _LINEAGE),
    Parameter("skewless.task", "enum", None, "turns on live quality metrics from delayed labels", _LINEAGE,
              choices=("classification", "regression")),
    Parameter("skewless.quality_thresholds", "str", None,
              "metric:value pairs, comma-separated, that raise quality alerts", _LINEAGE),
)

_FALLBACK = "Fallback (fallback/policy.py)"
declare(
    Parameter("skewless.fallback", "json", None,
              "what to answer when the model fails, times out or sheds load (a JSON rule document)", _FALLBACK),
)

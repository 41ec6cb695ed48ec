"""Shadow and canary settings: parsed from a model's config parameters or an admin request, checked once.

Config parameters (Triton's ``parameters`` map, string values), all optional but ``skewless.shadow_model``::

    skewless.shadow_model      MODEL or MODEL:VERSION (the challenger; no version: its latest)
    skewless.shadow_rate       fraction of requests mirrored, 0-1 (default 1)
    skewless.shadow_tolerance  max |primary - challenger| before a sample counts as divergent (default 1e-6)
    skewless.shadow_log_dir    where divergent samples go as Parquet (default: not logged)
    skewless.traffic_key       request parameter hashed for sampling and canary arms (default: the request id)
    skewless.canary_version    the candidate version; skewless.canary_weight its share (default 0.05)
    skewless.canary_window_s, skewless.canary_max_p99_ratio, skewless.canary_max_psi, skewless.canary_alpha
                               guardrails
"""

from __future__ import annotations

from dataclasses import dataclass, field

from skewless.protos import model_config_pb2 as mc

from ..errors import InvalidArgument
from ..parameters import read

P_MODEL = "skewless.shadow_model"
P_RATE = "skewless.shadow_rate"
P_TOLERANCE = "skewless.shadow_tolerance"
P_LOG_DIR = "skewless.shadow_log_dir"
P_KEY = "skewless.traffic_key"
P_CANARY_VERSION = "skewless.canary_version"
P_CANARY_WEIGHT = "skewless.canary_weight"
P_CANARY_WINDOW = "skewless.canary_window_s"
P_CANARY_P99 = "skewless.canary_max_p99_ratio"
P_CANARY_PSI = "skewless.canary_max_psi"
P_CANARY_ALPHA = "skewless.canary_alpha"
DEFAULT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ShadowTarget:
    """Which model (and version; 0: its latest) gets the mirrored requests."""

    model: str
    version: int = 0

    @classmethod
    def parse(cls, text: str) -> ShadowTarget:
        name, _, version = text.strip().partition(":")
        if not name:
            raise InvalidArgument(f"shadow target '{text}' must be MODEL or MODEL:VERSION")
        if version and not (version.isdigit() and int(version) > 0):
            raise InvalidArgument(f"shadow target '{text}': the version must be a positive integer")
        return cls(name, int(version or 0))

    def __str__(self) -> str:
        return f"{self.model}:{self.version}" if self.version else self.model


@dataclass(frozen=True)
class ShadowSettings:
    target: ShadowTarget
    rate: float = 1.0
    tolerance: float = DEFAULT_TOLERANCE
    log_dir: str = ""

    def __post_init__(self) -> None:
        check_fraction("shadow rate", self.rate)
        if not self.tolerance >= 0:
            raise InvalidArgument(f"shadow tolerance must be >= 0, got {self.tolerance}")


@dataclass(frozen=True)
class CanaryGuardrails:
    """Arm-against-arm limits over a sliding window; a breach rolls the candidate back to 0%."""

    window_s: float = 30.0
    min_requests: int = 20  # per arm in the window before any verdict
    max_error_rate_increase: float = 0.05  # candidate error rate minus the stable arm's
    max_p99_ratio: float = 2.0  # candidate p99 latency over the stable arm's
    max_psi: float = 0.25  # prediction drift of the candidate's outputs against the stable arm's
    promote_after_s: float = 0.0  # >0: promote to 100% after this long clean (an explicit policy)
    # Used when delayed labels exist (lineage/): the candidate's accuracy may fall this much below the stable
    # arm's (regression: its MAE rise this share above), once each arm has min_labels joined labels.
    max_quality_drop: float = 0.05
    min_labels: int = 50
    # The chance that an identical candidate is rolled back by the error-rate and drift tests, over all looks
    # (canary.py); benchmarks/guardrail_power.py measures it and the detection power.
    alpha: float = 0.01

    def __post_init__(self) -> None:
        if not self.window_s > 0 or self.min_requests < 1:
            raise InvalidArgument("canary window must be > 0 s and min_requests >= 1")
        if not 0 < self.alpha < 1:
            raise InvalidArgument(f"canary alpha must be between 0 and 1, got {self.alpha}")
        if self.max_p99_ratio <= 1 or self.max_psi <= 0 or self.max_error_rate_increase < 0:
            raise InvalidArgument("canary guardrails: max_p99_ratio must be > 1, max_psi > 0, "
                                  "max_error_rate_increase >= 0")


@dataclass(frozen=True)
class CanarySettings:
    candidate: int
    weight: float = 0.05
    guardrails: CanaryGuardrails = field(default_factory=CanaryGuardrails)

    def __post_init__(self) -> None:
        if self.candidate < 1:
            raise InvalidArgument(f"canary candidate version must be >= 1, got {self.candidate}")
        check_fraction("canary weight", self.weight)


def check_fraction(what: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise InvalidArgument(f"{what} must be a fraction between 0 and 1, got {value}")


def from_config(cfg: mc.ModelConfig) -> tuple[ShadowSettings | None, CanarySettings | None, str]:
    """The model's shadow and canary settings (None where not configured) and its traffic key parameter."""
    shadow = None
    target = read(cfg, P_MODEL)
    if target:
        shadow = ShadowSettings(ShadowTarget.parse(target), read(cfg, P_RATE), read(cfg, P_TOLERANCE),
                                read(cfg, P_LOG_DIR))
    canary = None
    version = read(cfg, P_CANARY_VERSION)
    if version is not None:
        guardrails = CanaryGuardrails(window_s=read(cfg, P_CANARY_WINDOW), max_p99_ratio=read(cfg, P_CANARY_P99),
                                      max_psi=read(cfg, P_CANARY_PSI), alpha=read(cfg, P_CANARY_ALPHA))
        canary = CanarySettings(version, read(cfg, P_CANARY_WEIGHT), guardrails)
    return shadow, canary, read(cfg, P_KEY)

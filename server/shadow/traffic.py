"""Per-model traffic control (shadow and canary) and the manager that attaches it to model versions.

``ModelVersion.traffic`` is None unless the model has a shadow or a canary; the data plane then calls
``route`` (unversioned requests: which arm serves) and ``observe`` (wraps the request's completion so the
side work happens after the reply has been handed over). Both are only reached past that None check.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from .. import alerts, audit
from ..errors import FailedPrecondition, InvalidArgument, ModelLoadError, NotFound, SkewlessError
from .canary import Canary, first_value
from .host_idle import MIN_IDLE, BusyHostGate
from .keys import key_of, sampled
from .mirror import Mirrored, Shadow, ShadowWorker
from .settings import CanarySettings, ShadowSettings, from_config

if TYPE_CHECKING:
    from ..models.repository import ModelRepository
    from ..models.version import ModelVersion

log = logging.getLogger(__name__)

SHADOW_SALT = b"skewless-shadow"
CHECK_INTERVAL_S = 0.25  # how often canary guardrails are evaluated: rollback within window + this
Complete = Callable[[Any, "BaseException | None", bool], None]
# The challenger seam: settings -> the version to mirror to (None: not serving now). The default reads
# MODEL[:VERSION] from the repository; a registry's `challenger` alias can be plugged in instead.
ChallengerResolver = Callable[[ShadowSettings], "ModelVersion | None"]


class ModelTraffic:
    """What one model's requests do besides being served: mirrored to a challenger, split with a candidate."""

    def __init__(self, name: str, worker: ShadowWorker, serving: Callable[[], Mapping[int, ModelVersion]],
                 key_param: str = ""):
        self.name = name
        self.serving = serving  # the model's serving versions now (the repository swaps the whole set)
        self.worker = worker
        self.key_param = key_param
        self.shadow: Shadow | None = None
        self.canary: Canary | None = None

    @property
    def active(self) -> bool:
        return self.shadow is not None or self.canary is not None

    def route(self, mv: ModelVersion, params: Mapping[str, Any] | None, request_id: str,
              header_key: str | None = None) -> ModelVersion:
        """The version an unversioned request is served by: the candidate for its key's share, else stable.
        The key: the caller's header (``header_key``), else the key parameter, else the request id."""
        canary = self.canary
        if canary is None:
            return mv
        served = self.serving()
        key = header_key if header_key is not None else key_of(params, request_id, self.key_param)
        if canary.wants_candidate(key):
            chosen = served.get(canary.candidate)
        else:
            chosen = served.get(self.stable_version(served))
        return chosen if chosen is not None else mv

    def stable_version(self, served: Mapping[int, ModelVersion] | None = None) -> int:
        """The canary's stable version now: the one it names, else the highest other serving one (0: none)."""
        canary = self.canary
        if canary is None:
            return 0
        if canary.stable:
            return canary.stable
        served = self.serving() if served is None else served
        return max((v for v in served if v != canary.candidate), default=0)

    def status(self) -> dict[str, Any]:
        """A snapshot of this model's shadow and canary (the TrafficAdmin status fields, by name)."""
        out: dict[str, Any] = {}
        shadow = self.shadow
        if shadow is not None:
            out["shadow_challenger"] = str(shadow.settings.target)
            out["shadow_rate"] = shadow.settings.rate
            out["pairs"] = [{"primary": p.primary, "challenger": p.challenger, "mirrored": p.mirrored,
                             "shed": p.shed, "errors": p.errors, "divergent": p.divergent,
                             "agreement": p.agreement} for p in list(shadow.pairs.values())]
        canary = self.canary
        if canary is not None:
            out.update(canary_candidate=canary.candidate, canary_weight=canary.weight,
                       canary_state=canary.state, canary_reason=canary.reason)
            stable = self.stable_version()
            out["arms"] = [{"arm": arm_name, "version": canary.candidate if arm_name == "candidate" else stable,
                            "served": arm.served, "failed": arm.failed} for arm_name, arm in canary.arms.items()]
        return out

    def arm_of(self, version: int) -> str | None:
        """The canary arm ``version`` serves as (for the prediction log), or None."""
        canary = self.canary
        return canary.arm_of(version) if canary is not None else None

    def observe(self, mv: ModelVersion, feeds: dict, rows: int, names: list[str],
                params: Mapping[str, Any] | None, request_id: str, received_ns: int, complete: Complete,
                header_key: str | None = None) -> Complete:
        """``complete``, wrapped to count the canary arm and to mirror the request when it is sampled."""
        canary = self.canary
        if canary is not None:
            arm = canary.arm_of(mv.version)
            if arm is not None:
                complete = functools.partial(_count_arm, canary.arms[arm], mv.version, received_ns, complete)
        shadow = self.shadow
        key = header_key if header_key is not None else key_of(params, request_id, self.key_param)
        if shadow is not None and sampled(key, shadow.settings.rate, SHADOW_SALT):
            complete = functools.partial(_mirror, self.worker, shadow, mv, feeds, rows, names, request_id, complete)
        return complete


def _count_arm(arm, mv_version: int, received_ns: int, complete: Complete, outcome, exc: BaseException | None,
               cancelled: bool) -> None:
    complete(outcome, exc, cancelled)
    if not cancelled:
        arm.record(exc is None, (time.perf_counter_ns() - received_ns) / 1e9,
                   first_value(outcome[0]) if exc is None else None, mv_version)


def _mirror(worker: ShadowWorker, shadow: Shadow, mv: ModelVersion, feeds: dict, rows: int, names: list[str],
            request_id: str, complete: Complete, outcome, exc: BaseException | None, cancelled: bool) -> None:
    complete(outcome, exc, cancelled)  # the reply goes first; the challenger only ever sees a served request
    if not cancelled and exc is None:
        if worker.full:  # a busy server: shed this one before building anything
            worker.shed(shadow, mv)
            return
        worker.offer(Mirrored(shadow, mv, feeds, rows, names, outcome[0], request_id, time.monotonic(),
                              time.time_ns()))


class TrafficManager:
    """Every model's traffic control, from config parameters and the admin RPC (which wins once used)."""

    def __init__(self, repository: ModelRepository, busy_host_idle: float = MIN_IDLE):
        self.repository = repository
        self.worker = ShadowWorker(gate=BusyHostGate(min_idle=busy_host_idle))
        self.models: dict[str, ModelTraffic] = {}
        self.resolve_challenger: ChallengerResolver = self._from_repository
        # (model, since time.time()) -> metrics per canary arm from joined labels (lineage/), when on.
        self.quality_by_arm: Callable[[str, float], dict] | None = None
        self._task: asyncio.Task | None = None

    # -- the repository's version hook -----------------------------------------------------------------
    def attach(self, mv: ModelVersion) -> None:
        """Give a loading version its model's traffic control (bad settings in its config fail the load)."""
        traffic = self.models.get(mv.name)
        if traffic is None:
            try:
                shadow, canary, key = from_config(mv.config)
                if canary is not None:
                    model = self.repository.models.get(mv.name)
                    versions = model.loading if model is not None and model.loading else (mv.version,)
                    check_canary_versions(mv.name, canary.candidate, 0, versions)
            except SkewlessError as exc:
                raise ModelLoadError(f"model '{mv.name}': {exc}") from None
            traffic = self.models[mv.name] = ModelTraffic(mv.name, self.worker, self._serving(mv.name), key)
            if shadow is not None:
                traffic.shadow = Shadow(mv.name, shadow, self.resolve_challenger)
            if canary is not None:
                traffic.canary = Canary(mv.name, canary)
        self._refresh(traffic, extra=mv)

    def status(self, name: str) -> dict[str, Any]:
        """A snapshot of ``name``'s traffic control (empty when it has none)."""
        traffic = self.models.get(name)
        return traffic.status() if traffic is not None else {}

    def register_metrics(self, meter: Any) -> None:
        """The shadow and canary instruments (shadow/metrics.py), on the meter the server gives."""
        from .metrics import register_metrics

        register_metrics(meter, self)

    def _serving(self, name: str) -> Callable[[], Mapping[int, ModelVersion]]:
        models = self.repository.models

        def serving() -> Mapping[int, ModelVersion]:
            model = models.get(name)
            return model.serving if model is not None else {}
        return serving

    def _refresh(self, traffic: ModelTraffic, extra: ModelVersion | None = None) -> None:
        """Point the model's versions (and one still loading) at its traffic control, or at None if idle."""
        versions = list(traffic.serving().values()) + ([extra] if extra is not None else [])
        for mv in versions:
            mv.traffic = traffic if traffic.active else None

    def _from_repository(self, settings: ShadowSettings) -> ModelVersion | None:
        model = self.repository.models.get(settings.target.model)
        if model is None:
            return None
        if settings.target.version:
            return model.serving.get(settings.target.version)
        return model.latest_ready()

    def _traffic(self, name: str) -> ModelTraffic:
        model = self.repository.models.get(name)
        if model is None or not model.serving:
            raise NotFound(f"model '{name}' is not serving")
        traffic = self.models.get(name)
        if traffic is None:
            traffic = self.models[name] = ModelTraffic(name, self.worker, self._serving(name))
        return traffic

    # -- admin ---------------------------------------------------------------------------------------------
    def set_shadow(self, name: str, settings: ShadowSettings | None, key_param: str | None = None) -> ModelTraffic:
        """Mirror ``name`` to a challenger (None: stop). The challenger must take the primary's inputs."""
        traffic = self._traffic(name)
        if settings is not None:
            challenger = self.resolve_challenger(settings)
            if challenger is None:
                raise NotFound(f"shadow challenger '{settings.target}' is not serving")
            primary = self.repository.get(name)
            _check_same_inputs(primary, challenger, "shadow challenger")
        old = traffic.shadow
        audit.record("shadow", name, _shadow_doc(old.settings) if old is not None else None,
                     _shadow_doc(settings) if settings is not None else None)
        traffic.shadow = Shadow(name, settings, self.resolve_challenger) if settings is not None else None
        if old is not None and old.log is not None:
            asyncio.get_running_loop().run_in_executor(None, old.close)
        if key_param is not None:
            traffic.key_param = key_param
        self._refresh(traffic)
        log.info("model '%s': shadow %s", name,
                 f"to {settings.target} at {settings.rate:.1%}" if settings is not None else "off")
        return traffic

    def set_canary(self, name: str, settings: CanarySettings | None, stable: int = 0,
                   key_param: str | None = None) -> ModelTraffic:
        """Start a canary of ``settings.candidate`` against ``stable`` (0: the highest other version), or stop."""
        traffic = self._traffic(name)
        if settings is not None:
            served = self.repository.models[name].serving
            against = check_canary_versions(name, settings.candidate, stable, served)
            _check_same_inputs(served[against], served[settings.candidate], "canary candidate")
        old = traffic.canary
        audit.record("canary", name, _canary_doc(old) if old is not None else None,
                     {"candidate": settings.candidate, "weight": settings.weight, "stable": stable}
                     if settings is not None else None)
        if settings is not None:
            traffic.canary = Canary(name, settings, stable)
            if self.quality_by_arm is not None:
                traffic.canary.quality = functools.partial(self.quality_by_arm, name)
        else:
            traffic.canary = None
        if key_param is not None:
            traffic.key_param = key_param
        self._refresh(traffic)
        log.info("model '%s': canary %s", name, f"of version {settings.candidate} at {settings.weight:.1%}"
                 if settings is not None else "off")
        return traffic

    def promote(self, name: str) -> Canary:
        canary = self._canary(name)
        canary.promote("promoted by command")
        self._count(name, "canary_promoted")
        audit.record("canary_promote", name, _canary_doc(canary), {"candidate": canary.candidate, "weight": 1.0},
                     reason="promoted by command")
        log.warning("model '%s': canary version %d promoted to 100%% by command", name, canary.candidate)
        return canary

    def roll_back(self, name: str, reason: str = "rolled back by command") -> Canary:
        canary = self._canary(name)
        self._roll_back(canary, reason)
        return canary

    def _canary(self, name: str) -> Canary:
        traffic = self.models.get(name)
        if traffic is None or traffic.canary is None:
            raise FailedPrecondition(f"model '{name}' has no canary: start one with `skewless canary {name} …`")
        return traffic.canary

    def _roll_back(self, canary: Canary, reason: str, principal: str | None = None) -> None:
        before = _canary_doc(canary)
        canary.roll_back(reason)
        self._count(canary.model, "canary_rollback")
        audit.record("canary_rollback", canary.model, before, {"candidate": canary.candidate, "weight": 0.0},
                     principal, reason=reason)
        alerts.notify("canary_rollback", canary.model, reason=reason, candidate=canary.candidate)
        log.warning("model '%s': canary version %d rolled back to 0%%: %s", canary.model, canary.candidate, reason)

    def _count(self, name: str, event: str) -> None:
        events = self.repository.events
        events[(name, event)] = events.get((name, event), 0) + 1

    # -- guardrails ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._guard())

    async def _guard(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            self.worker.gate.host.idle()  # keeps the host reading current (one /proc/stat read per window)
            now = time.monotonic()
            for traffic in list(self.models.values()):
                canary = traffic.canary
                if canary is None or canary.state != "running":
                    continue
                try:
                    reason = canary.check(now)
                except Exception:  # a guardrail bug must not stop the others
                    log.exception("canary check of '%s' failed", canary.model)
                    continue
                if reason is not None:
                    self._roll_back(canary, reason, "server")
                elif canary.promote_due(now):
                    before = _canary_doc(canary)
                    canary.promote(f"clean for {canary.settings.guardrails.promote_after_s:g} s (policy)")
                    self._count(canary.model, "canary_promoted")
                    audit.record("canary_promote", canary.model, before,
                                 {"candidate": canary.candidate, "weight": 1.0}, "server", reason="policy")
                    log.warning("model '%s': canary version %d promoted to 100%% by policy", canary.model,
                                canary.candidate)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.worker.close()
        loop = asyncio.get_running_loop()
        for traffic in self.models.values():
            if traffic.shadow is not None:
                await loop.run_in_executor(None, traffic.shadow.close)


def check_canary_versions(name: str, candidate: int, stable: int, versions: Collection[int]) -> int:
    """The stable version a canary of ``candidate`` compares against (``stable``, 0: the highest other one),
    when both are among the ``versions`` served; else raises with the reason. The one check for a canary
    declared in config.pbtxt (against the versions its version_policy loads) and one set by the admin RPC."""
    served = sorted(versions)
    fix = "(a canary needs both versions served: version_policy { all { } } or { specific { versions: [...] } })"
    if candidate not in served:
        raise NotFound(f"canary candidate '{name}' version {candidate} is not serving: versions served {served} "
                       f"{fix}")
    if stable and stable not in served:
        raise NotFound(f"stable version {stable} of '{name}' is not serving: versions served {served} {fix}")
    others = [v for v in served if v != candidate]
    if not stable and not others:
        raise FailedPrecondition(f"'{name}' serves no version besides the canary candidate {candidate} to compare "
                                 f"against: versions served {served} {fix}")
    return stable or max(others)


def _shadow_doc(settings: ShadowSettings) -> dict:
    return {"target": settings.target, "rate": settings.rate}


def _canary_doc(canary: Canary) -> dict:
    return {"candidate": canary.candidate, "state": canary.state, "weight": canary.weight}


def _check_same_inputs(primary: ModelVersion, other: ModelVersion, what: str) -> None:
    theirs = {n: (s.datatype.name, tuple(s.dims)) for n, s in other.inputs.items()}
    ours = {n: (s.datatype.name, tuple(s.dims)) for n, s in primary.inputs.items()}
    if theirs != ours or other.max_batch_size == 0 and primary.max_batch_size > 0:
        raise InvalidArgument(f"{what} {other.label} does not take the inputs of {primary.label}: "
                              f"{theirs} against {ours}")

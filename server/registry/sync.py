"""The model repository when models live in a registry: sync, verify, stage, load, swap, roll back.

A :class:`RegistryRepository` *is* the model repository (``models/repository.py``), so lookups, RepositoryIndex,
statistics, metrics and the drain-then-close retirement of old versions are the ones every other mode uses;
it replaces only where versions come from. A sync of one model asks the source which versions the policy
wants (one listing), and does nothing more when their tokens are the ones already serving. Otherwise it
stages each version in the cache (downloaded, verified, listed again unchanged), builds it off the event loop
(sessions, model_warmup, the optional validation set) and swaps it in with the repository's one assignment.

Failure isolation: the store being down, slow or refusing never touches what is serving (readiness is
unchanged); the poll backs off, and each failure *episode* costs one log line and one count
(``skewless_registry_failures``), not one per poll. A version rejected for its content is reported once
(RepositoryIndex reason, ``skewless_model_events{event="rejected_*"}``) and not downloaded again until the
registry changes it.

Rollback pins: the model serves the rolled-back versions until ``skewless unpin`` (or the Unpin RPC); a
registry that moves meanwhile is noted in the log, not followed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skewless.protos import model_config_pb2 as mc

from .. import audit
from ..errors import FailedPrecondition, InvalidArgument, ModelLoadError, NotFound, Unavailable
from ..models.config import (
    json_mentions_max_batch_size,
    mentions_max_batch_size,
    parse_config,
    parse_config_json,
)
from ..models.repository import ManagedModel, ModelRepository, VersionStatus
from ..models.version import ModelVersion
from .cache import RejectedVersion, StagedVersion, VersionCache
from .redact import describe_error
from .source import SHADOW_ALIAS, Source, VersionPolicy
from .validation import ValidationFailed, validate_version

log = logging.getLogger(__name__)

LIST_TIMEOUT_S = 30.0  # a listing slower than this counts as the store failing
MAX_BACKOFF_S = 120.0


class RegistryUnavailable(Unavailable):
    """The registry could not be reached or answered with an error (message redacted)."""


@dataclass
class RegistryHealth:
    """What the metrics and logs say about the store: reachable now, failure episodes, the last error."""

    reachable: bool = True
    failures: int = 0
    last_error: str = ""
    down_since: float = 0.0
    last_poll: float | None = None  # wall time of the last poll's end (None: none yet)
    last_poll_ok: bool | None = None


@dataclass
class Served:
    """One serving set as installed: its staged versions and the config it was built with."""

    staged: dict[int, StagedVersion]
    base: mc.ModelConfig
    explicit_mbs: bool
    key: dict[int, str]


@dataclass
class ModelSync:
    key: dict[int, str] = field(default_factory=dict)  # version -> token now serving
    history: list[Served] = field(default_factory=list)  # recently served sets, newest last
    pinned: Served | None = None
    pinned_note: dict[int, str] | None = None  # registry state already logged while pinned
    failed_key: dict[int, str] | None = None  # a set whose content was rejected: not retried until it changes
    reported: set[tuple] = field(default_factory=set)
    aliases: dict[str, int] = field(default_factory=dict)  # alias -> version, as the last poll saw them


def policy_of(cfg: mc.ModelConfig) -> VersionPolicy:
    which = cfg.version_policy.WhichOneof("policy_choice")
    if which == "all":
        return VersionPolicy("all")
    if which == "specific":
        return VersionPolicy("specific", specific=tuple(cfg.version_policy.specific.versions))
    n = cfg.version_policy.latest.num_versions if which == "latest" else 1
    return VersionPolicy("latest", latest=max(1, n))


class RegistryRepository(ModelRepository):
    def __init__(self, source: Source, cache: VersionCache, control_mode: str = "none",
                 startup_models: list[str] | None = None, poll_interval_s: float = 15.0,
                 default_max_batch_size: int = 4, keep_served: int = 2, max_backoff_s: float = MAX_BACKOFF_S):
        super().__init__(cache.root, control_mode, startup_models, poll_interval_s, default_max_batch_size)
        self.source = source
        self.cache = cache
        self.keep_served = max(1, keep_served)
        self.max_backoff_s = max_backoff_s
        self.health = RegistryHealth()
        self.sync_state: dict[str, ModelSync] = {}
        self._names: list[str] = []
        # Store I/O on threads of its own: a slow download never holds up the loop's default executor,
        # which builds model versions.
        self._io = ThreadPoolExecutor(2, thread_name_prefix="registry-io")

    # -- the repository's own interface --------------------------------------------------------------
    def model_names(self) -> list[str]:
        return sorted(set(self._names) | set(self.models))

    async def start(self) -> None:
        try:
            self._names = await self._call(self.source.model_names)
        except RegistryUnavailable as exc:
            if self.control_mode != "poll":
                raise RegistryUnavailable(f"model registry {self.source.describe()}: {exc}") from None
            self._source_failed(exc)
        names = (self.startup_models if self.control_mode == "explicit" and "*" not in self.startup_models
                 else self._names)
        await self._load_each(names, " from the registry")
        if self.control_mode == "poll":
            self._poll_task = asyncio.create_task(self._poll_loop(), name="registry-poll")

    async def stop(self) -> None:
        await super().stop()
        self._io.shutdown(wait=False, cancel_futures=True)
        self.source.close()

    async def load(self, name: str, config_json: str | None = None) -> None:
        """Sync one model now (startup, RepositoryModelLoad): errors raise, with the reason in the index."""
        if not name or "/" in name or name.startswith("."):
            raise InvalidArgument(f"'{name}' is not a model name")
        model = self.models.setdefault(name, ManagedModel(name))
        model.wanted = True
        await self._sync(name, config_json, raise_errors=True)

    # -- one model -------------------------------------------------------------------------------------
    async def _sync(self, name: str, config_json: str | None = None, raise_errors: bool = False) -> None:
        model = self.models.setdefault(name, ManagedModel(name))
        st = self.sync_state.setdefault(name, ModelSync())
        text = config_json if config_json else await self._call(self.source.model_config, name)
        try:
            if config_json:
                base, explicit_mbs = parse_config_json(config_json, name), json_mentions_max_batch_size(config_json)
            elif text is not None:
                base, explicit_mbs = parse_config(text, f"{name}/config.pbtxt"), mentions_max_batch_size(text)
            else:
                base, explicit_mbs = mc.ModelConfig(), False
        except ModelLoadError as exc:
            self._reject(name, st, 0, "load_failed", f"bad config.pbtxt: {exc}", model_level=True)
            if raise_errors:
                raise
            return
        choice = await self._call(self.source.versions, name, policy_of(base))
        if self.source.has_aliases and choice.aliases != st.aliases:
            st.aliases = dict(choice.aliases)
            log.info("registry: aliases of model '%s' now %s", name,
                     ", ".join(f"{a}={v}" for a, v in sorted(st.aliases.items())) or "none")
        for v, reason in sorted(choice.incomplete.items()):
            if v not in model.serving:
                self._reject(name, st, v, "incomplete", reason)
        key = {ref.version: ref.token for ref in choice.wanted}
        if not key:
            model.reason = choice.reason or f"no complete version of '{name}' in the registry {self.source.describe()}"
            if raise_errors:
                raise ModelLoadError(model.reason)
            return
        if st.pinned is not None:
            if key != st.pinned.key and key != st.pinned_note:
                st.pinned_note = key
                log.warning("model '%s' is pinned to versions %s by a rollback; the registry now has %s "
                            "(skewless unpin %s to follow it)", name, sorted(st.pinned.staged), sorted(key), name)
            return
        if key == st.key and model.serving:
            return
        if key == st.failed_key and not raise_errors:
            return
        async with model.lock:
            try:
                staged = {}
                for v in sorted(key):
                    listing = await self._call(self.source.listing, name, v)
                    staged[v] = await self._call(self.cache.stage, self.source, name, v, listing,
                                                 self._protected(), timeout=None)
            except RejectedVersion as exc:
                if exc.event == "corrupt":
                    st.failed_key = key
                self._reject(name, st, v, exc.event, f"rejected: {exc}")
                if raise_errors:
                    raise ModelLoadError(f"model '{name}' version {v} {exc}") from None
                return
            served = Served(staged, base, explicit_mbs, key)
            try:
                await self._install_served(model, served, validate=True)
            except ModelLoadError:
                st.failed_key = key
                if raise_errors:
                    raise
                return
            st.key, st.failed_key = key, None
            self._remember(st, served)
        self._notify(name)

    async def _install_served(self, model: ManagedModel, served: Served, validate: bool) -> None:
        failed_validation = []

        def check(mv: ModelVersion, version_dir: Path) -> None:
            try:
                validate_version(mv, version_dir)
            except ValidationFailed:
                failed_validation.append(mv.version)
                raise

        try:
            await self._install(model, served.base, served.explicit_mbs,
                                {v: s.path for v, s in served.staged.items()}, served.key,
                                check if validate else None)
        finally:
            if failed_validation:
                self._count(model.name, "rejected_validation")
        for s in served.staged.values():
            self.cache.touch(s.path)

    def _remember(self, st: ModelSync, served: Served) -> None:
        st.history = [h for h in st.history if h.key != served.key][-self.keep_served:] + [served]

    def _protected(self) -> set[Path]:
        out = set()
        for st in self.sync_state.values():
            for h in [*st.history, *([st.pinned] if st.pinned else [])]:
                out.update(s.path for s in h.staged.values())
        return out

    def _reject(self, name: str, st: ModelSync, version: int, event: str, reason: str,
                model_level: bool = False) -> None:
        """Record a rejected version (index reason, metric event, log line) once per distinct reason."""
        model = self.models[name]
        if model_level:
            model.reason = reason
        else:
            model.status[version] = VersionStatus("UNAVAILABLE", reason)
        seen = (version, event, reason)
        if seen in st.reported:
            return
        st.reported.add(seen)
        self._count(name, f"rejected_{event}" if event != "load_failed" else event)
        log.error("registry: model '%s' version %s not loaded: %s", name, version or "-", reason)

    # -- rollback ----------------------------------------------------------------------------------------
    async def rollback(self, name: str, version: int | None = None) -> tuple[list[int], list[int]]:
        """Serve an earlier, still cached set (the previous one, or the one holding ``version``) at once and
        pin it; returns (versions now serving, versions before)."""
        model, st = self.models.get(name), self.sync_state.get(name)
        if model is None or st is None or not st.history:
            raise NotFound(f"model '{name}' has not been served from the registry")
        current = sorted(model.serving)
        earlier = [h for h in reversed(st.history) if sorted(h.staged) != current]
        if version is None:
            if not earlier:
                raise FailedPrecondition(f"no earlier version of '{name}' is cached to roll back to")
            target = earlier[0]
        else:
            target = next((h for h in reversed(st.history) if version in h.staged), None)
            if target is None:
                cached = sorted({v for h in st.history for v in h.staged})
                raise NotFound(f"version {version} of '{name}' is not among the recently served versions "
                               f"kept for rollback: {cached}")
            if len(target.staged) > 1:
                only = {version: target.staged[version]}
                target = Served(only, target.base, target.explicit_mbs, {version: target.key[version]})
        async with model.lock:
            await self._install_served(model, target, validate=False)
            st.pinned, st.pinned_note, st.key = target, None, target.key
            self._remember(st, target)
        self._count(name, "rollback")
        audit.record("rollback", name, current, sorted(target.staged), pinned=True)
        log.warning("model '%s' rolled back from versions %s to %s; pinned until unpinned", name, current,
                    sorted(target.staged))
        self._notify(name)
        return sorted(model.serving), current

    async def unpin(self, name: str) -> list[int]:
        """Follow the registry again; syncs at once (a failure to reach it leaves the pinned set serving)."""
        st = self.sync_state.get(name)
        if st is None or name not in self.models:
            raise NotFound(f"model '{name}' has not been served from the registry")
        was, st.pinned = st.pinned, None
        if was is not None:
            audit.record("unpin", name, sorted(was.staged), None)
            log.info("model '%s' unpinned: following the registry again", name)
            st.key = {}
            try:
                await self._sync(name)
            except RegistryUnavailable as exc:
                self._source_failed(exc)
        return sorted(self.models[name].serving)

    def alias_version(self, name: str, alias: str = SHADOW_ALIAS) -> int | None:
        """The version ``alias`` names for ``name`` as of the last sync (no request): by default the
        ``challenger``, the shadow target. None when the registry has no aliases or the alias is not set."""
        st = self.sync_state.get(name)
        return st.aliases.get(alias) if st is not None else None

    def pinned(self, name: str) -> bool:
        st = self.sync_state.get(name)
        return st is not None and st.pinned is not None

    def status(self) -> dict[str, Any]:
        """Source health, the last poll and, per model, what serves and whether a rollback pins it (reads
        the cache directory: call it off the event loop)."""
        h = self.health
        models = {}
        for name, st in list(self.sync_state.items()):
            model = self.models.get(name)
            models[name] = {"serving": sorted(model.serving) if model is not None else [],
                            "pinned": st.pinned is not None,
                            "pinned_versions": sorted(st.pinned.staged) if st.pinned is not None else [],
                            "rejected_pending_change": st.failed_key is not None,
                            "aliases": dict(st.aliases)}
        return {"source": self.source.describe(), "reachable": h.reachable, "failures": h.failures,
                "last_error": h.last_error, "last_poll": h.last_poll, "last_poll_ok": h.last_poll_ok,
                "cache_bytes": self.cache.disk_bytes(), "models": models}

    # -- polling, backoff, store health -----------------------------------------------------------------
    async def poll_once(self) -> bool:
        """Sync every model once; False when the store failed (the caller backs off)."""
        try:
            self._names = await self._call(self.source.model_names)
            names = self._names if self.control_mode == "poll" else [
                n for n, m in self.models.items() if m.wanted]
            for name in names:
                await self._sync(name)
        except RegistryUnavailable as exc:
            self._source_failed(exc)
            self.health.last_poll, self.health.last_poll_ok = time.time(), False
            return False
        self._source_ok()
        self.health.last_poll, self.health.last_poll_ok = time.time(), True
        return True

    async def _poll_loop(self) -> None:
        delay = self.poll_interval_s
        while True:
            await asyncio.sleep(delay)
            try:
                ok = await self.poll_once()
            except Exception:
                log.exception("registry poll failed")
                ok = False
            delay = self.poll_interval_s if ok else min(self.max_backoff_s, max(delay, self.poll_interval_s) * 2)

    def _source_failed(self, exc: Exception) -> None:
        h = self.health
        h.last_error = str(exc)
        if h.reachable:
            h.reachable, h.failures, h.down_since = False, h.failures + 1, time.monotonic()
            log.warning("model registry %s failed: %s; serving what is loaded, retrying with backoff",
                        self.source.describe(), exc)

    def _source_ok(self) -> None:
        h = self.health
        if not h.reachable:
            h.reachable = True
            log.info("model registry %s reachable again after %.0fs", self.source.describe(),
                     time.monotonic() - h.down_since)

    async def _call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = LIST_TIMEOUT_S) -> Any:
        """Run a blocking store call on the registry's threads; its failures become RegistryUnavailable."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._io, fn, *args), timeout)
        except (RejectedVersion, asyncio.CancelledError):
            raise
        except TimeoutError:
            raise RegistryUnavailable(f"no answer within {timeout:.0f}s") from None
        except Exception as exc:
            raise RegistryUnavailable(describe_error(exc)) from None


__all__ = ["RegistryHealth", "RegistryRepository", "RegistryUnavailable", "policy_of"]

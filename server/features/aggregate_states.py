"""The server's windowed-aggregate states (issue 29): one ``AggregateState`` per model and plan, shared by the
model's versions, saved and restored, counted.

A version whose spec has aggregates gets its state here when it is built (``attach``, a repository version
hook): the state of its model with the same ``plan_hash`` if one is live (a new version of an unchanged plan
keeps every key), else a new one, restored from ``DIR/<model>.aggstate`` when ``--aggregate-state-dir`` is set
and the saved plan matches (a mismatch, or an unreadable file, is logged, the file kept aside as
``.aggstate.replaced``, and the state starts empty). Versions release it when they close; the last release
saves it (a graceful stop unloads every version after draining its requests, so the saved state holds every
event the server acknowledged). With a directory a background thread also saves it every
``--aggregate-save-interval`` seconds; the engine's ``save`` writes a temporary file and renames it, so a crash
leaves the previous save whole.

The state is in this process's memory: with ``--workers N > 1`` each process would see a share of the events
and serve different values, so a model with aggregates is refused there (``AggregatesRefused``) unless
``--aggregate-store redis://...`` keeps it in Redis (``aggregate_redis.RedisAggregateStore``), shared by
every process and replica; then nothing is saved here and ``--workers`` is allowed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..background import BackgroundWriter
from ..errors import ModelLoadError
from .aggregate_settings import AggregateSettings

log = logging.getLogger(__name__)

STATE_SUFFIX = ".aggstate"
# Nanoseconds per event-time unit, for the ingest lag (event times are counted from the Unix epoch).
UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


class AggregatesRefused(ModelLoadError):
    """A model with aggregates under ``--workers N > 1``: its state would split between the processes."""


@dataclass
class IngestCounts:
    """What one ingest call did: rows recorded in at least one group, rows dropped as late in every group they
    could go to, rows skipped (no group had its key and time inputs present and valid)."""

    recorded: int = 0
    late: int = 0
    skipped: int = 0


@dataclass
class ModelAggregates:
    """One model's live state for one plan, the versions holding it, and what the server counts about it."""

    model: str
    plan_hash: str
    state: Any  # skewless.native.aggregates.AggregateState
    path: Path | None
    refs: int = 0
    ingested_rows: int = 0  # rows recorded through the ingest RPC
    ingest_late: int = 0  # ingested rows dropped as late
    newest_ingested_ns: int | None = None  # newest event time ingested, in ns since the epoch
    saves: int = 0
    save_errors: int = 0
    last_save: float | None = None  # time.time() of the last successful save
    restored: bool = False
    saver: BackgroundWriter | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # counters and saves, not the engine

    def note_ingest(self, counts: IngestCounts, newest_ns: int | None) -> None:
        with self.lock:
            self.ingested_rows += counts.recorded
            self.ingest_late += counts.late
            if newest_ns is not None and (self.newest_ingested_ns is None or newest_ns > self.newest_ingested_ns):
                self.newest_ingested_ns = newest_ns

    def ingest_lag_s(self, now_ns: int | None = None) -> float | None:
        """Seconds from the newest ingested event time to now (None before the first ingest)."""
        newest = self.newest_ingested_ns
        if newest is None:
            return None
        return ((now_ns if now_ns is not None else time.time_ns()) - newest) / 1e9

    def save(self) -> bool:
        """Write the state to its file now (blocking; the engine holds its lock while it serializes)."""
        if self.path is None:
            return False
        with self.lock:
            try:
                self.state.save(self.path)
            except Exception:
                self.save_errors += 1
                log.exception("aggregate state of model '%s': saving %s failed", self.model, self.path)
                return False
            self.saves += 1
            self.last_save = time.time()
        return True

    def stats(self) -> dict[str, Any]:
        out = dict(self.state.stats())
        lag = self.ingest_lag_s()
        out.update(plan_hash=self.plan_hash, versions=self.refs, ingested_rows=self.ingested_rows,
                   ingest_late=self.ingest_late, ingest_lag_s=lag, state_file=str(self.path) if self.path else None,
                   restored=self.restored, saves=self.saves, save_errors=self.save_errors, last_save=self.last_save)
        return out


class AggregateStates:
    """Every live aggregate state of the server, by model (then plan). Thread-safe: versions are built on
    executor threads."""

    def __init__(self, settings: AggregateSettings | None = None, workers: int = 1) -> None:
        self.settings = settings or AggregateSettings()
        self.workers = workers
        # model -> plan -> its state, in the order the plans were last attached: the last one owns the file
        self._models: dict[str, dict[str, ModelAggregates]] = {}
        self._lock = threading.Lock()
        self.refused: list[str] = []  # models refused under --workers > 1 (the start fails on any)

    # -- the version hook ----------------------------------------------------------------------------------
    def attach(self, mv: Any) -> None:
        """Give a version (``models.version.ModelVersion``) whose spec has aggregates its model's state (a
        repository version hook)."""
        stage = mv.features
        if stage is None or not stage.has_aggregates:
            return
        stage.use_aggregates(self.acquire(mv.name, stage), self.release)
        stage.max_future_ns = int(self.settings.max_future_s * 1e9)
        if self.settings.store is not None:  # a round trip per batch: never block the event loop on it
            mv.run_off_loop()

    def acquire(self, model: str, stage: Any) -> ModelAggregates:
        if self.workers > 1 and self.settings.store is None:
            message = (f"model '{model}' has windowed aggregates, whose state lives in the server's memory: with "
                       f"--workers {self.workers} each process would see a share of the events and serve different "
                       "values; serve it with --workers 1, or share the state in Redis with --aggregate-store redis://HOST:PORT/DB")
            self.refused.append(message)
            raise AggregatesRefused(message)
        with self._lock:
            plans = self._models.setdefault(model, {})
            fresh = stage.new_aggregate_state(max_keys=self.settings.max_keys)
            plan = fresh.plan_hash
            entry = plans.get(plan)
            if entry is None and self.settings.store is not None:
                entry = ModelAggregates(model, plan, self._redis_store(model, stage), None)
            elif entry is None:
                path = self._path(model)
                entry = ModelAggregates(model, plan, fresh, path)
                if path is not None:
                    self._restore(entry)
                    entry.saver = BackgroundWriter(
                        f"aggregate-state-{model}", _no_records, capacity=1, poll=self.settings.save_interval_s,
                        tick=lambda flush, e=entry: self._tick(e, flush), label=f"aggregate state of '{model}'")
                    entry.saver.start()
            plans.pop(plan, None)
            plans[plan] = entry  # (re)attached last: its model's state file is now this plan's
            entry.refs += 1
            return entry

    def release(self, entry: ModelAggregates) -> None:
        """A version holding ``entry`` closed; the last one saves it (if it still owns its file) and drops it."""
        with self._lock:
            entry.refs -= 1
            if entry.refs > 0:
                return
            owns_file = self._owns_file(entry)
            plans = self._models.get(entry.model, {})
            plans.pop(entry.plan_hash, None)
            if not plans:
                self._models.pop(entry.model, None)
        if entry.saver is not None:
            entry.saver.close(timeout=60)
        if owns_file and entry.path is not None and entry.save():
            log.info("aggregate state of model '%s' saved to %s (%s)", entry.model, entry.path,
                     _summary(entry.state.stats()))
        close = getattr(entry.state, "close", None)  # a Redis store's connections
        if close is not None:
            close()

    def _redis_store(self, model: str, stage: Any) -> Any:
        from .aggregate_redis import RedisAggregateStore

        url = self.settings.store
        try:
            store = RedisAggregateStore(url, model, stage.new_aggregate_state, grace_s=self.settings.store_grace_s)
        except RuntimeError as exc:  # the redis extra is missing
            raise ModelLoadError(f"model '{model}': {exc}") from None
        why = store.ping()
        if why is None:
            log.info("aggregate state of model '%s' lives in %s", model, url)
        else:  # requests get UNAVAILABLE until it answers; the load itself does not fail for it
            log.warning("aggregate state of model '%s': %s does not answer yet (%s)", model, url, why)
        return store

    def _owns_file(self, entry: ModelAggregates) -> bool:
        plans = self._models.get(entry.model)
        return bool(plans) and next(reversed(plans)) == entry.plan_hash

    def _path(self, model: str) -> Path | None:
        directory = self.settings.state_dir
        return directory / f"{model}{STATE_SUFFIX}" if directory is not None else None

    def _restore(self, entry: ModelAggregates) -> None:
        from skewless.native.aggregates import AggregatePlanError

        path = entry.path
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            log.info("aggregate state of model '%s': no saved state at %s; starting empty", entry.model, path)
            return
        try:
            entry.state.load(path)
        except AggregatePlanError as exc:
            why = f"it was saved for another plan ({exc})"
        except Exception as exc:  # unreadable or truncated: never fail the load for it
            why = f"it cannot be read ({type(exc).__name__}: {exc})"
        else:
            entry.restored = True
            log.info("aggregate state of model '%s' restored from %s (%s)", entry.model, path,
                     _summary(entry.state.stats()))
            return
        aside = path.with_name(path.name + ".replaced")
        os.replace(path, aside)
        log.warning("aggregate state of model '%s': not restoring %s: %s; starting empty (the file is kept as %s)",
                    entry.model, path, why, aside)

    def _tick(self, entry: ModelAggregates, flush: bool) -> None:
        """The saver thread's periodic save (its poll interval is the save interval)."""
        with self._lock:
            owns_file = self._owns_file(entry)
        if owns_file:
            entry.save()

    # -- reading -------------------------------------------------------------------------------------------
    def entries(self) -> Iterator[ModelAggregates]:
        with self._lock:
            items = [e for plans in self._models.values() for e in plans.values()]
        yield from items

    def status(self) -> dict[str, Any]:
        """``GET /v2/status/aggregates``: per model (and plan), the state's size, events and persistence."""
        out: dict[str, Any] = {}
        for e in self.entries():
            out.setdefault(e.model, {})[e.plan_hash[:12]] = e.stats()
        return {"store": self.settings.store,
                "state_dir": str(self.settings.state_dir) if self.settings.state_dir else None,
                "save_interval_s": self.settings.save_interval_s, "max_keys": self.settings.max_keys,
                "models": out}


def _no_records(records: list) -> None:  # the saver queues nothing: it only ticks
    return None


def _summary(stats: dict[str, Any]) -> str:
    return f"{stats.get('keys', 0)} keys, {stats.get('events_recorded', 0)} events, {stats.get('bytes', 0)} bytes"


__all__ = ["AggregateStates", "AggregatesRefused", "IngestCounts", "ModelAggregates", "UNIT_NS"]

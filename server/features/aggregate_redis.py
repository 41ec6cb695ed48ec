"""Windowed-aggregate state in Redis (issue 29), shared by every replica and ``--workers`` process that points
at the same Redis: ``--aggregate-store redis://HOST:PORT/DB``.

Redis keeps the events, the engine does all the arithmetic. Per (model, plan, group, key) a sorted set holds
the key's events as fixed-size binary records (``native/include/skewless_agg_store.h``: batch id and row, so
equal events stay distinct; bucket; time; per value slot the value and its 53-bit hash), scored by bucket;
per group a one-member sorted set holds G, the newest bucket recorded. Each batch is ONE ``MULTI … EXEC``
round trip: first the reads (G of each group the batch touches; per key touched, its events from the oldest
bucket any of its rows can see, ``b - R``, on: that includes its newest bucket, top(k), whenever top(k) can
matter; for ingest only the newest event), then the writes (the batch's events with ``ZADD``, the key's
hidden buckets trimmed, its expiry renewed, ``ZADD GT`` of G). Redis runs a transaction alone, so each batch
sees every batch committed before it and none after, and commits all or nothing. A scratch engine is then
seeded with that prior (buckets rebuilt from their records with the engine's own accumulators, top and G
set) and runs the batch's rows through its normal read-then-record loop: the values are exactly those of the
in-process engine, and of the backfill, for the events in commit order.

Every event of the batch is written, late ones too: a late event lands in a bucket that is hidden (below
``top(k) - R`` or ``G - R``) and, top and G only growing, never visible again, so it changes no value.

Expiry: a key's set expires ``R`` buckets of wall-clock time plus ``--aggregate-store-grace`` seconds after
its last event. The engine forgets a key once G has passed ``top(k) + R``; so the two agree as long as each
group's event time advances ``R`` buckets within that expiry, i.e. unless the event stream lags wall-clock
time by more than the grace (live traffic keeps pace; a replay faster than real time is fine).

Errors: a Redis that is down or failing gives the batch (or the ingest) ``AggregateStoreUnavailable`` —
UNAVAILABLE / 503 with the reason — and nothing of that batch is recorded (the transaction never ran). The
client never retries a transaction (a retry could re-read after other batches committed).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import Unavailable
from ..models.stats import Histogram

EXTRA_HINT = "the Redis aggregate store needs the 'redis' package: pip install 'skewless[redis]'"
UNIT_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
# Round-trip seconds: bounds of the histogram (a local Redis answers in ~0.1 ms, a remote one in ~1 ms).
ROUND_TRIP_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0


class AggregateStoreUnavailable(Unavailable):
    """The aggregate store (Redis) could not be reached or failed: the batch is refused, nothing recorded."""


def redis_available() -> bool:
    """Whether the ``redis`` client can be imported (the ``redis`` extra)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        return False
    return True


def connect(url: str) -> Any:
    """A Redis client for ``url`` (``redis://HOST:PORT/DB``) that never retries a command by itself."""
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError as exc:
        raise RuntimeError(EXTRA_HINT) from exc
    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False)


class _Group:
    __slots__ = ("index", "retention", "ttl_s", "watermark_key", "events_prefix")

    def __init__(self, index: int, retention: int, ttl_s: int, prefix: bytes) -> None:
        self.index = index
        self.retention = retention
        self.ttl_s = ttl_s
        self.watermark_key = prefix + b"%d:G" % index
        self.events_prefix = prefix + b"%d:e:" % index


def plan_groups(plan: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, str]]:
    """(bucket, retention R, time unit) of each group, in the engine's group order (first aggregate's order)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for a in plan:
        groups.setdefault((tuple(a["keys"]), a["time"], a["bucket"]), []).append(a)
    return [(bucket, max(a["window"] // bucket for a in members), members[0]["time_unit"])
            for (_, _, bucket), members in groups.items()]


class RedisAggregateStore:
    """One model's aggregate state in Redis; used where ``AggregateState`` is (``score``, ``ingest``, ``stats``,
    ``names``, ``inputs``, ``plan_hash``). Thread-safe: each thread seeds its own scratch engine.

    ``new_state`` makes an empty in-process ``AggregateState`` of the plan (the scratch engines);
    ``client``: a Redis client (``connect(url)``); ``grace_s``: see the module docstring.
    """

    def __init__(self, url: str, model: str, new_state: Callable[[], Any], *, grace_s: float = 86400.0,
                 client: Any = None) -> None:
        self.url = url
        self.model = model
        self._new_state = new_state
        self._local = threading.local()
        proto = self._scratch()
        self.names: tuple[str, ...] = tuple(proto.names)
        self.inputs: tuple[str, ...] = tuple(proto.inputs)
        self.plan_hash: str = proto.plan_hash
        m = model.encode()
        prefix = b"skl:agg:%d:%s:%s:" % (len(m), m, self.plan_hash[:16].encode())
        self._groups = [_Group(i, r, math.ceil(r * bucket * UNIT_S[unit] + grace_s), prefix)
                        for i, (bucket, r, unit) in enumerate(plan_groups(proto.plan))]
        self._client = client if client is not None else connect(url)
        self._lock = threading.Lock()  # the counters below
        self.round_trip = Histogram(ROUND_TRIP_BOUNDS)  # seconds
        self.round_trips = 0
        self.errors = 0
        self.last_error: str | None = None
        self.events_recorded = 0
        self.events_late = 0
        self.watermark: int | None = None

    def _scratch(self) -> Any:
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = self._new_state()
        return state

    # -- batches -----------------------------------------------------------------------------------------------
    def score(self, columns: Mapping[str, tuple], n_rows: int, out: Mapping[str, Any] | None = None,
              record: bool = True) -> dict:
        """Read each row's windows, then record it, in row order, against the state in Redis (one round trip).
        ``record=False`` only reads (a shadow's copy of rows the primary records): the transaction writes nothing."""
        scratch = self._prepare(columns, n_rows, True, write=record)
        if not record:
            return scratch.score(columns, n_rows, out=out, record=False)
        result = scratch.score(columns, n_rows, out=out)
        self._count(scratch)
        return result

    def ingest(self, columns: Mapping[str, tuple], n_rows: int) -> int:
        """Record events without reading (one round trip); returns the rows recorded in at least one group."""
        scratch = self._prepare(columns, n_rows, False)
        recorded = scratch.ingest(columns, n_rows)
        self._count(scratch)
        return recorded

    def _prepare(self, columns: Mapping[str, tuple], n_rows: int, scoring: bool, write: bool = True) -> Any:
        """Describe the batch (checking its columns), run its transaction, seed this thread's scratch engine."""
        scratch = self._scratch()
        batch_id = int.from_bytes(os.urandom(8), "little")
        try:
            described = scratch.store_describe(columns, n_rows, scoring, batch_id)
        except ValueError as exc:
            if type(exc) is not ValueError:  # FeatureInputError and friends: the caller maps them
                raise
            from skewless.native.feature_kernel import FeatureInputError

            raise FeatureInputError("/".join(sorted({a["time"] for a in scratch.plan})), str(exc)) from None
        replies = self._transact(described, scoring, write)
        scratch.store_reset()
        for g, keys, (watermark, priors) in zip(self._groups, described, replies, strict=True):
            if keys:
                scratch.store_seed(g.index, watermark, [(k[0], p) for k, p in zip(keys, priors, strict=True) if p])
        return scratch

    def _transact(self, described: list, scoring: bool, write: bool = True) -> list[tuple[int | None, list]]:
        """The batch's one MULTI/EXEC: reads first, then writes. Returns per group (G, [records per key])."""
        import redis

        touched = [(g, keys) for g, keys in zip(self._groups, described, strict=True) if keys]
        if not touched:  # no row has its keys and time: nothing to read or record
            return [(None, []) for _ in self._groups]
        pipe = self._client.pipeline(transaction=True)
        for g, keys in touched:
            pipe.execute_command("ZSCORE", g.watermark_key, b"g")
            for key, lo, _hi, _events in keys:
                if scoring:
                    pipe.execute_command("ZRANGEBYSCORE", g.events_prefix + key, lo - g.retention, "+inf")
                else:
                    pipe.execute_command("ZRANGE", g.events_prefix + key, -1, -1)
        for g, keys in touched if write else ():
            newest = None
            for key, _lo, hi, events in keys:
                name = g.events_prefix + key
                pipe.execute_command("ZADD", name, *events)
                pipe.execute_command("ZREMRANGEBYSCORE", name, "-inf", f"({hi - g.retention}")
                pipe.execute_command("EXPIRE", name, g.ttl_s)
                newest = hi if newest is None else max(newest, hi)
            pipe.execute_command("ZADD", g.watermark_key, "GT", newest, b"g")
        start = time.perf_counter()
        try:
            replies = pipe.execute()
        except redis.RedisError as exc:
            why = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.errors += 1
                self.last_error = why
            raise AggregateStoreUnavailable(f"the aggregate store {self.url} of model '{self.model}' is "
                                            f"unavailable ({why}); the batch was not recorded") from None
        finally:
            pipe.reset()
        elapsed = time.perf_counter() - start
        with self._lock:
            self.round_trips += 1
            self.round_trip.observe(elapsed)
        at = 0
        by_group = {}
        for g, keys in touched:
            g_score = replies[at]
            priors = replies[at + 1: at + 1 + len(keys)]
            at += 1 + len(keys)
            by_group[g.index] = (None if g_score is None else int(float(g_score)), priors)
        return [by_group.get(g.index, (None, [])) for g in self._groups]

    def _count(self, scratch: Any) -> None:
        s = scratch.stats()
        with self._lock:
            self.events_recorded += s["events_recorded"]
            self.events_late += s["events_late"]
            wm = s["watermark"]
            if wm is not None and (self.watermark is None or wm > self.watermark):
                self.watermark = wm

    # -- state -------------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """What this process knows: its events recorded and late, its newest event time, its round trips and
        errors. Keys, buckets and bytes live in Redis (shared by every process): None here."""
        with self._lock:
            return {"keys": None, "buckets": None, "bytes": None, "events_recorded": self.events_recorded,
                    "events_late": self.events_late, "keys_evicted": 0, "watermark": self.watermark,
                    "store": self.url, "round_trips": self.round_trips, "store_errors": self.errors,
                    "last_store_error": self.last_error}

    def ping(self) -> str | None:
        """None when Redis answers, else why not."""
        import redis

        try:
            self._client.ping()
        except redis.RedisError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def save(self, path: Any) -> None:  # the state lives in Redis: nothing to save
        return None

    def load(self, path: Any) -> None:
        return None

    def close(self) -> None:
        self._client.close()


__all__ = ["AggregateStoreUnavailable", "RedisAggregateStore", "connect", "plan_groups", "redis_available"]

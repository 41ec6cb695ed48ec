"""``skewless serve``'s flags for the state of windowed aggregate features (issue 29): where it is saved, how
often, and how many keys it may hold; or the Redis store that replicas and ``--workers`` share.

Light on purpose (argparse and dataclasses only): ``skewless --help`` imports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..settings import ErrorFn


@dataclass
class AggregateSettings:
    state_dir: Path | None = None  # None: the state lives in memory only
    save_interval_s: float = 60.0
    max_keys: int = 0  # per model; 0: no bound
    store: str | None = None  # redis://HOST:PORT/DB: the state lives there (server/features/aggregate_redis.py)
    store_grace_s: float = 86400.0  # expiry slack of the Redis store beyond the retention
    max_future_s: float = 3600.0  # event times further ahead of the clock are refused; 0: no bound

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--aggregate-state-dir", metavar="DIR", default=None,
                           help="save the state of models with windowed aggregates as DIR/<model>.aggstate, every "
                                "--aggregate-save-interval seconds and at a graceful stop, and restore it at load "
                                "when its plan matches the spec's (default: in memory only)")
        group.add_argument("--aggregate-save-interval", type=float, default=60.0, metavar="S",
                           help="seconds between two saves of the aggregate state (with --aggregate-state-dir)")
        group.add_argument("--aggregate-max-keys", type=int, default=0, metavar="N",
                           help="keys the aggregate state of one model may hold; beyond it the keys idle longest "
                                "are evicted and counted (0: no bound)")
        group.add_argument("--aggregate-store", metavar="redis://HOST:PORT/DB", default=None,
                           help="keep the aggregate state in this Redis instead of the process, shared by every "
                                "replica and --workers process pointing at it (needs the 'redis' extra; one round "
                                "trip per batch; excludes --aggregate-state-dir and --aggregate-max-keys)")
        group.add_argument("--aggregate-store-grace", type=float, default=86400.0, metavar="S",
                           help="with --aggregate-store: a key's events expire this many seconds after its window "
                                "(the retention) has passed in wall-clock time since its last event; values stay "
                                "exact while event time lags wall-clock time by less")

        group.add_argument("--aggregate-max-future", type=float, default=3600.0, metavar="S",
                           help="refuse (INVALID_ARGUMENT / 400) a request or event whose event time is more than S "
                                "seconds ahead of the server's clock, taking event times as Unix time in the "
                                "spec's unit: one far-future event would hide every window of its aggregate "
                                "group until real time catches up (0: no check)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> AggregateSettings:
        if args.aggregate_save_interval <= 0:
            error("--aggregate-save-interval must be positive")
        if args.aggregate_max_keys < 0:
            error("--aggregate-max-keys must be 0 (no bound) or more")
        directory = Path(args.aggregate_state_dir).absolute() if args.aggregate_state_dir else None
        store = args.aggregate_store
        if store is not None:
            if not store.startswith(("redis://", "rediss://", "unix://")):
                error(f"--aggregate-store must be a redis://HOST:PORT/DB URL, got {store!r}")
            if directory is not None or args.aggregate_max_keys:
                error("--aggregate-store keeps the state in Redis: drop --aggregate-state-dir and "
                      "--aggregate-max-keys (keys expire there instead)")
            from .aggregate_redis import EXTRA_HINT, redis_available

            if not redis_available():
                error(f"--aggregate-store: {EXTRA_HINT}")
        if args.aggregate_store_grace < 0:
            error("--aggregate-store-grace must be 0 or more")
        if not args.aggregate_max_future >= 0:
            error("--aggregate-max-future must be 0 (no check) or more seconds")
        return cls(directory, args.aggregate_save_interval, args.aggregate_max_keys, store,
                   args.aggregate_store_grace, args.aggregate_max_future)

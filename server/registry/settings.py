"""``skewless serve``'s flags for an MLflow Model Registry source and the local cache of registry versions.

Light on purpose (argparse and dataclasses only, the registry's parsers imported when used): ``skewless
--help`` imports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..settings import ErrorFn


@dataclass
class RegistrySettings:
    uri: str | None = None  # an MLflow tracking server (mlflow://HOST:PORT, or 'mlflow': $MLFLOW_TRACKING_URI)
    models: list[str] = field(default_factory=list)  # NAME[=REGISTERED_MODEL][@ALIAS]
    cache: Path | None = None  # where registry versions are cached (default: the user's cache dir)
    cache_bytes: int = 10 * 2**30
    keep: int = 2  # earlier served versions kept cached for rollback
    max_backoff_s: float = 120.0  # longest wait between retries while the registry is failing

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--registry", metavar="URI",
                           help="serve from an MLflow Model Registry instead: mlflow://HOST:PORT (mlflow+https://… "
                                "for TLS), or 'mlflow' for $MLFLOW_TRACKING_URI; credentials from "
                                "MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD")
        group.add_argument("--registry-model", action="append", default=[], metavar="NAME[=REGISTERED][@ALIAS]",
                           help="with --registry: serve registered model REGISTERED (default NAME) as NAME, at the "
                                "version its alias ALIAS (default champion) names; repeatable. Without it, every "
                                "registered model with a champion alias is served under its own name")
        group.add_argument("--registry-cache", default=None, metavar="DIR",
                           help="local cache of registry versions (default ~/.cache/skewless/registry; one per "
                                "server, and with --workers N one per worker under it: worker-0, …)")
        group.add_argument("--registry-cache-gb", type=float, default=10.0,
                           help="bound on the cache's disk use (with --workers N, split between the workers' "
                                "caches); least recently used versions are evicted")
        group.add_argument("--registry-max-backoff", type=float, default=120.0, metavar="SECS",
                           help="while the registry fails, polls back off (doubling) up to this many seconds apart")
        group.add_argument("--registry-keep", type=int, default=2,
                           help="earlier served versions kept cached for `skewless rollback`")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> RegistrySettings:
        """Checks --model-repository / --registry / --registry-model before anything starts."""
        if args.registry and args.model_repository:
            error("--model-repository and --registry are alternatives: serve a repository (a directory or a "
                  "URL) or an MLflow Model Registry, not both")
        if not args.registry and not args.model_repository:
            error("one of --model-repository or --registry is required")
        if args.registry_model and not args.registry:
            error("--registry-model needs --registry (an MLflow tracking server)")
        if args.registry:
            from .mlflow_rest import tracking_uri
            from .mlflow_source import parse_model_specs

            try:
                tracking_uri(args.registry)
                parse_model_specs(args.registry_model)
            except ValueError as exc:
                error(str(exc))
        if args.registry_max_backoff <= 0:
            error("--registry-max-backoff must be a positive number of seconds")
        return cls(args.registry, args.registry_model, Path(args.registry_cache) if args.registry_cache else None,
                   int(args.registry_cache_gb * 2**30), args.registry_keep, args.registry_max_backoff)

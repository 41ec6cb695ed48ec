"""``skewless serve``'s options: each area's settings object, composed. The areas add their own flags to
the groups ``skewless serve --help`` shows (``add_serve_arguments``) and read them back, checked
(``ServerOptions.from_args``); the server reads them through the area's object (``opts.security.tls``).

Light on purpose: ``skewless --help`` imports it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..alerts.settings import AlertHookSettings
from ..audit.settings import AuditSettings
from ..features.aggregate_settings import AggregateSettings
from ..lineage.settings import LineageSettings
from ..models.settings import RepositorySettings
from ..registry.settings import RegistrySettings
from ..security.settings import SecuritySettings
from ..settings import ErrorFn
from ..shadow.traffic_settings import TrafficSettings
from ..telemetry.settings import TelemetrySettings
from ..workers.settings import WorkerSettings
from .settings import ConnectionSettings, ListenSettings
from .transport_settings import GrpcTransportSettings

if TYPE_CHECKING:
    from ..workers.cluster import WorkerPlace

# (group title, description, the areas whose flags it holds), in --help's order.
SERVE_GROUPS = (
    ("model repository", None, (RepositorySettings,)),
    ("registry", None, (RegistrySettings,)),
    ("ports", None, (ListenSettings,)),
    ("telemetry", None, (TelemetrySettings,)),
    ("security", "TLS on all three ports; callers and what they may do (README: Security)", (SecuritySettings,)),
    ("overload and connections", None, (ConnectionSettings, GrpcTransportSettings)),
    ("workers", None, (WorkerSettings,)),
    ("traffic", None, (TrafficSettings,)),
    ("alerts and audit", None, (AlertHookSettings, AuditSettings)),
    ("lineage", "prediction log, delayed labels and live quality (README: Lineage)", (LineageSettings,)),
    ("aggregates", "state of windowed aggregate features (docs: aggregates-serving)", (AggregateSettings,)),
)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Every area's flags, each area in its group."""
    for title, description, areas in SERVE_GROUPS:
        group = parser.add_argument_group(title, description)
        for area in areas:
            area.add_arguments(group)


@dataclass
class ServerOptions:
    repository: RepositorySettings = field(default_factory=RepositorySettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    listen: ListenSettings = field(default_factory=ListenSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    connections: ConnectionSettings = field(default_factory=ConnectionSettings)
    grpc_transport: GrpcTransportSettings = field(default_factory=GrpcTransportSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    traffic: TrafficSettings = field(default_factory=TrafficSettings)
    alerts: AlertHookSettings = field(default_factory=AlertHookSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    lineage: LineageSettings = field(default_factory=LineageSettings)
    aggregates: AggregateSettings = field(default_factory=AggregateSettings)
    worker: WorkerPlace | None = None  # set in each process of --workers N (by its parent, in the environment)

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> ServerOptions:
        """Each area's settings, checked in the order the command line's mistakes are reported."""
        connections = ConnectionSettings.from_args(args, error)
        registry = RegistrySettings.from_args(args, error)
        return cls(
            repository=RepositorySettings.from_args(args, error),
            registry=registry,
            connections=connections,
            grpc_transport=GrpcTransportSettings.from_args(args, error),
            alerts=AlertHookSettings.from_args(args, error),
            workers=WorkerSettings.from_args(args, error),
            security=SecuritySettings.from_args(args, error),
            listen=ListenSettings.from_args(args, error),
            telemetry=TelemetrySettings.from_args(args, error),
            traffic=TrafficSettings.from_args(args, error),
            audit=AuditSettings.from_args(args, error),
            lineage=LineageSettings.from_args(args, error),
            aggregates=AggregateSettings.from_args(args, error),
        )

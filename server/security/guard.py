"""The one authorisation decision, free of any transport: who is calling, may they call this group, how often.

Both front ends ask ``Guard.check`` with what their transport knows (a bearer token, the client certificate's
common name, whether the peer is on loopback) and map its domain errors to their own codes
(UNAUTHENTICATED/401, PERMISSION_DENIED/403, RESOURCE_EXHAUSTED/429). Messages name the credential that was
wrong and what was expected, never a model: an unauthenticated caller learns nothing about what is served.

Without a principals file the server trusts its network, as Triton does, except for ``admin`` (repository
load/unload, rollback, shadow and log control), which is refused from any peer that is not on loopback.
"""

from __future__ import annotations

import ipaddress
import threading
import time

from ..errors import PermissionDenied, ResourceExhausted, Unauthenticated
from .principals import Principal, Principals

HEALTH = "health"  # liveness and readiness: always open (orchestrators probe without credentials)
INFERENCE = "inference"
METADATA = "metadata"
ADMIN = "admin"

# gRPC method (full name) -> group; methods not listed fall under METADATA (reflection, future reads).
GRPC_GROUPS = {
    "/inference.GRPCInferenceService/ServerLive": HEALTH,
    "/inference.GRPCInferenceService/ServerReady": HEALTH,
    "/grpc.health.v1.Health/Check": HEALTH,
    "/grpc.health.v1.Health/Watch": HEALTH,
    "/inference.GRPCInferenceService/ModelInfer": INFERENCE,
    "/inference.GRPCInferenceService/ModelStreamInfer": INFERENCE,
    # Events for windowed aggregates change what later requests are served, as scoring does: the inference
    # group's callers send them (REST: POST .../events, below), not only admins.
    "/skewless.v1.Events/Ingest": INFERENCE,
    "/inference.GRPCInferenceService/RepositoryModelLoad": ADMIN,
    "/inference.GRPCInferenceService/RepositoryModelUnload": ADMIN,
    "/inference.GRPCInferenceService/LogSettings": ADMIN,
    "/inference.GRPCInferenceService/TraceSetting": ADMIN,
    "/inference.GRPCInferenceService/SystemSharedMemoryRegister": ADMIN,
    "/inference.GRPCInferenceService/SystemSharedMemoryUnregister": ADMIN,
    "/inference.GRPCInferenceService/CudaSharedMemoryRegister": ADMIN,
    "/inference.GRPCInferenceService/CudaSharedMemoryUnregister": ADMIN,
}
ADMIN_SERVICE_PREFIX = "/skewless.v1."  # our own admin service(s): every method is admin


def grpc_group(method: str) -> str:
    group = GRPC_GROUPS.get(method)
    if group is not None:
        return group
    return ADMIN if method.startswith(ADMIN_SERVICE_PREFIX) else METADATA


def http_group(method: str, path: str) -> str:
    """The group of a KServe v2 REST request (the metrics port's /metrics is METADATA: it names models)."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["v2", "health"]:
        return HEALTH
    if parts[:2] == ["v2", "status"]:  # the side modules' status: log paths, registry source, hooks
        return ADMIN
    if parts[:2] == ["v2", "repository"]:
        return METADATA if parts[-1] == "index" else ADMIN
    if parts and parts[-1] in ("infer", "generate", "events") and method == "POST":
        return INFERENCE
    if parts and parts[0] in ("v2",) and len(parts) > 1 and parts[1] in ("logging", "trace", "systemsharedmemory",
                                                                          "cudasharedmemory"):
        return ADMIN
    if parts[-2:] == ["trace", "setting"]:
        return ADMIN
    return METADATA


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _Bucket:
    __slots__ = ("tokens", "last")

    def __init__(self, tokens: float, last: float):
        self.tokens = tokens
        self.last = last


class Guard:
    """``check`` returns the caller (None: anonymous, allowed) or raises the domain error that refuses it."""

    def __init__(self, principals: Principals | None = None, rate_per_s: float | None = None):
        self.principals = principals
        self.rate = rate_per_s
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self.refused = {"unauthenticated": 0, "permission_denied": 0, "rate_limited": 0}

    @property
    def authenticating(self) -> bool:
        return self.principals is not None

    def check(self, group: str, bearer: str | None, cert_name: str | None, peer_host: str | None
              ) -> Principal | None:
        """``peer_host``: the caller's address (loopback decides admin without auth; it keys anonymous callers'
        rate limits)."""
        if group == HEALTH:
            return None
        principal = None
        if self.principals is None:
            if group == ADMIN and not is_loopback(peer_host):
                self.refused["permission_denied"] += 1
                raise PermissionDenied("admin requests are accepted from loopback only while no authentication is "
                                       "configured: start the server with --auth-principals FILE and send a token "
                                       "of a principal in the admin group")
        else:
            if bearer is not None:
                principal = self.principals.by_token(bearer)
            elif cert_name is not None:
                principal = self.principals.by_cert(cert_name)
            if principal is None:
                self.refused["unauthenticated"] += 1
                raise Unauthenticated(
                    "invalid bearer token" if bearer is not None else
                    f"client certificate '{cert_name}' names no principal" if cert_name is not None else
                    "credentials required: send 'authorization: Bearer TOKEN' (or a client certificate of a "
                    "known principal)")
            if group not in principal.groups:
                self.refused["permission_denied"] += 1
                raise PermissionDenied(f"principal '{principal.name}' may not make {group} requests "
                                       f"(its groups: {', '.join(sorted(principal.groups))})")
        if self.rate is not None:
            self._take(principal.name if principal is not None else f"@{peer_host}")
        return principal

    def _take(self, who: str) -> None:
        rate = self.rate
        assert rate is not None
        now = time.monotonic()
        with self._lock:
            b = self._buckets.get(who)
            if b is None:
                if len(self._buckets) > 100_000:  # many anonymous peers: start afresh rather than grow
                    self._buckets.clear()
                b = self._buckets[who] = _Bucket(max(1.0, rate), now)
            b.tokens = min(max(1.0, rate), b.tokens + (now - b.last) * rate)
            b.last = now
            if b.tokens < 1.0:
                self.refused["rate_limited"] += 1
                whom = f"principal '{who}'" if not who.startswith("@") else f"address {who[1:]}"
                raise ResourceExhausted(f"rate limit exceeded: at most {rate:g} requests/s for {whom}")
            b.tokens -= 1.0


def bearer_of(value: str | None) -> str | None:
    """The token of an ``authorization: Bearer TOKEN`` value; '' for any other scheme (a credential that is
    present but wrong, so UNAUTHENTICATED says 'invalid')."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


__all__ = ["ADMIN", "HEALTH", "INFERENCE", "METADATA", "Guard", "bearer_of", "grpc_group", "http_group",
           "is_loopback"]

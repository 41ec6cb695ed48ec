"""gRPC edge of ``skewless.v1.TrafficAdmin``: shadow traffic and canary rollout (shadow/traffic.py).

Same exception boundary as the other servicers: bad requests are INVALID_ARGUMENT, unknown or unserved
models NOT_FOUND, a canary command without a canary FAILED_PRECONDITION.
"""

from __future__ import annotations

from skewless.protos import skewless_traffic_pb2 as pb
from skewless.protos import skewless_traffic_pb2_grpc as pb_grpc

from ..errors import InvalidArgument
from ..peers import Peers, everywhere
from ..shadow.settings import (
    DEFAULT_TOLERANCE,
    CanaryGuardrails,
    CanarySettings,
    ShadowSettings,
    ShadowTarget,
)
from ..shadow.traffic import TrafficManager
from .grpc_servicer import rpc

TRAFFIC_SERVICE = "skewless.v1.TrafficAdmin"


def _model(request) -> str:
    if not request.model:
        raise InvalidArgument("a model name is required")
    return request.model


def _guardrails(g: pb.CanaryGuardrails) -> CanaryGuardrails:
    d = CanaryGuardrails()
    return CanaryGuardrails(window_s=g.window_s or d.window_s, min_requests=g.min_requests or d.min_requests,
                            max_error_rate_increase=g.max_error_rate_increase or d.max_error_rate_increase,
                            max_p99_ratio=g.max_p99_ratio or d.max_p99_ratio, max_psi=g.max_psi or d.max_psi,
                            promote_after_s=g.promote_after_s or d.promote_after_s)


def status(name: str, manager: TrafficManager) -> pb.TrafficStatus:
    return pb.TrafficStatus(model=name, **manager.status(name))


class TrafficServicer(pb_grpc.TrafficAdminServicer):
    def __init__(self, manager: TrafficManager, peers: Peers | None = None):
        self.manager = manager
        self.peers = peers  # --workers N: changes apply on every worker

    @everywhere(TRAFFIC_SERVICE)
    @rpc
    async def SetShadow(self, request, context):
        name = _model(request)
        settings = None
        if request.challenger and request.rate > 0:
            settings = ShadowSettings(ShadowTarget.parse(request.challenger), request.rate,
                                      request.tolerance or DEFAULT_TOLERANCE, request.log_dir)
        elif request.rate < 0 or request.rate > 1:
            raise InvalidArgument(f"shadow rate must be a fraction between 0 and 1, got {request.rate}")
        self.manager.set_shadow(name, settings, request.key_parameter or None)
        return status(name, self.manager)

    @everywhere(TRAFFIC_SERVICE)
    @rpc
    async def SetCanary(self, request, context):
        name = _model(request)
        settings = None
        if not request.stop:
            if request.candidate < 1:
                raise InvalidArgument("SetCanary needs a candidate version (>= 1), or stop")
            settings = CanarySettings(request.candidate, request.weight, _guardrails(request.guardrails))
        if request.stable < 0:
            raise InvalidArgument(f"stable version must be >= 0, got {request.stable}")
        self.manager.set_canary(name, settings, request.stable, request.key_parameter or None)
        return status(name, self.manager)

    @everywhere(TRAFFIC_SERVICE)
    @rpc
    async def PromoteCanary(self, request, context):
        name = _model(request)
        self.manager.promote(name)
        return status(name, self.manager)

    @everywhere(TRAFFIC_SERVICE)
    @rpc
    async def RollbackCanary(self, request, context):
        name = _model(request)
        self.manager.roll_back(name)
        return status(name, self.manager)

    @rpc
    async def GetTraffic(self, request, context):
        name = _model(request)
        self.manager.repository.get(name)  # NOT_FOUND for unknown models
        return status(name, self.manager)


def add_traffic_service(servicer: TrafficServicer, server) -> None:
    pb_grpc.add_TrafficAdminServicer_to_server(servicer, server)

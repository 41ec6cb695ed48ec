"""gRPC edge of our own admin service (``skewless.v1.RegistryAdmin``): rollback and unpin.

Same exception boundary as the inference servicer (``grpc_servicer.rpc``): domain errors become their status
codes. A server whose models are not synced from a registry answers FAILED_PRECONDITION.
"""

from __future__ import annotations

from skewless.protos import skewless_admin_pb2 as pb
from skewless.protos import skewless_admin_pb2_grpc as pb_grpc

from ..errors import FailedPrecondition, InvalidArgument
from ..models.repository import ModelRepository
from ..peers import Peers, everywhere
from ..registry.sync import RegistryRepository
from .grpc_servicer import rpc

ADMIN_SERVICE = "skewless.v1.RegistryAdmin"


class AdminServicer(pb_grpc.RegistryAdminServicer):
    def __init__(self, repository: ModelRepository, peers: Peers | None = None):
        self.repository = repository
        self.peers = peers  # --workers N: rollback and unpin apply on every worker

    def _registry(self) -> RegistryRepository:
        if not isinstance(self.repository, RegistryRepository):
            raise FailedPrecondition("rollback and unpin need a registry: start the server with "
                                     "--model-repository URL (s3://, gs://, file://…)")
        return self.repository

    @everywhere(ADMIN_SERVICE)
    @rpc
    async def Rollback(self, request, context):
        if not request.model:
            raise InvalidArgument("Rollback needs a model name")
        if request.version < 0:
            raise InvalidArgument(f"version must be positive (or 0 for the previous one), got {request.version}")
        repo = self._registry()
        serving, previous = await repo.rollback(request.model, request.version or None)
        return pb.RollbackResponse(serving=serving, previous=previous, pinned=repo.pinned(request.model))

    @everywhere(ADMIN_SERVICE)
    @rpc
    async def Unpin(self, request, context):
        if not request.model:
            raise InvalidArgument("Unpin needs a model name")
        return pb.UnpinResponse(serving=await self._registry().unpin(request.model))


def add_admin_service(servicer: AdminServicer, server) -> None:
    pb_grpc.add_RegistryAdminServicer_to_server(servicer, server)

"""The shared-memory RPCs (status, register, unregister; system and CUDA) over the region table, protobuf
messages in and out: gRPC serves them as they are, HTTP/REST converts its JSON to and from them."""

from __future__ import annotations

from skewless.protos import grpc_service_pb2 as pb

from ..errors import InvalidArgument, Unimplemented
from . import cuda
from .regions import CUDA, SYSTEM, RegionTable, open_system_region


class SharedMemory:
    """This process's registered regions and the calls that manage them."""

    def __init__(self, allowed: bool = False) -> None:
        self.table = RegionTable()
        self.allowed = allowed  # --allow-client-shm: off by default, as in Triton

    def _check_allowed(self) -> None:
        if not self.allowed:
            raise Unimplemented("Client shared memory is disabled. Start the server with '--allow-client-shm' to "
                                "enable.")

    # -- system shared memory --------------------------------------------------------------------------
    def system_status(self, req: pb.SystemSharedMemoryStatusRequest) -> pb.SystemSharedMemoryStatusResponse:
        resp = pb.SystemSharedMemoryStatusResponse()
        for doc in self.table.status(req.name, SYSTEM):
            resp.regions[doc["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**doc))
        return resp

    def system_register(self, req: pb.SystemSharedMemoryRegisterRequest) -> pb.SystemSharedMemoryRegisterResponse:
        self._check_allowed()
        if not req.name:
            raise InvalidArgument("'region name' is necessary to register system shared memory region")
        if self.table.has(req.name):  # before opening anything, as Triton checks
            self.table.add_exists_error(req.name)
        self.table.add(open_system_region(req.name, req.key, req.offset, req.byte_size))
        return pb.SystemSharedMemoryRegisterResponse()

    def system_unregister(self, req: pb.SystemSharedMemoryUnregisterRequest
                          ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._check_allowed()
        if req.name:
            self.table.remove(req.name, SYSTEM)
        else:
            self.table.remove_all(SYSTEM)
        return pb.SystemSharedMemoryUnregisterResponse()

    # -- CUDA shared memory ----------------------------------------------------------------------------
    def cuda_status(self, req: pb.CudaSharedMemoryStatusRequest) -> pb.CudaSharedMemoryStatusResponse:
        resp = pb.CudaSharedMemoryStatusResponse()
        for doc in self.table.status(req.name, CUDA):
            resp.regions[doc["name"]].CopyFrom(pb.CudaSharedMemoryStatusResponse.RegionStatus(**doc))
        return resp

    def cuda_register(self, req: pb.CudaSharedMemoryRegisterRequest) -> pb.CudaSharedMemoryRegisterResponse:
        self._check_allowed()
        if not req.name:
            raise InvalidArgument("'region name' is necessary to register cuda shared memory region")
        if not cuda.available():
            raise InvalidArgument(f"failed to register CUDA shared memory region '{req.name}': CUDA is not "
                                  "available on this server (no usable GPU); use system shared memory")
        if self.table.has(req.name):
            self.table.add_exists_error(req.name)
        self.table.add(cuda.open_region(req.name, req.raw_handle, req.device_id, req.byte_size))
        return pb.CudaSharedMemoryRegisterResponse()

    def cuda_unregister(self, req: pb.CudaSharedMemoryUnregisterRequest) -> pb.CudaSharedMemoryUnregisterResponse:
        self._check_allowed()
        if req.name:
            self.table.remove(req.name, CUDA)
        else:
            self.table.remove_all(CUDA)
        return pb.CudaSharedMemoryUnregisterResponse()

"""gRPC edge of ``skewless.v1.Events``: events that are never scored, recorded in a model's aggregate state.

The request is an ``inference.ModelInferRequest`` (raw or typed contents), checked and decoded by the data
plane as an inference request is; errors come back with the same codes and messages.
"""

from __future__ import annotations

from skewless.protos import skewless_events_pb2 as pb
from skewless.protos import skewless_events_pb2_grpc as pb_grpc

from ..dataplane import DataPlane
from .grpc_servicer import rpc

EVENTS_SERVICE = "skewless.v1.Events"


class EventsServicer(pb_grpc.EventsServicer):
    def __init__(self, dataplane: DataPlane):
        self.dp = dataplane

    @rpc
    async def Ingest(self, request, context):
        c = await self.dp.ingest_events(request.model_name, request.model_version, request.inputs,
                                        request.raw_input_contents)
        return pb.IngestResponse(recorded=c.recorded, late=c.late, skipped=c.skipped)


def add_events_service(servicer: EventsServicer, server) -> None:
    pb_grpc.add_EventsServicer_to_server(servicer, server)

"""gRPC edge of ``skewless.v1.Feedback``: delayed labels joined with the prediction log (lineage/)."""

from __future__ import annotations

from skewless.protos import skewless_feedback_pb2 as pb
from skewless.protos import skewless_feedback_pb2_grpc as pb_grpc

from ..errors import FailedPrecondition, InvalidArgument
from ..hooks import ALL_ROWS
from ..lineage.service import Lineage
from .grpc_servicer import rpc

FEEDBACK_SERVICE = "skewless.v1.Feedback"


class FeedbackServicer(pb_grpc.FeedbackServicer):
    def __init__(self, lineage: Lineage | None):
        self.lineage = lineage

    @rpc
    async def SubmitLabels(self, request, context):
        if self.lineage is None:
            raise FailedPrecondition("labels are joined with the prediction log, which is off: start the server "
                                     "with --prediction-log DIR")
        if not request.model:
            raise InvalidArgument("a model name is required")
        items = [(lb.request_id, list(lb.values), lb.row if lb.HasField("row") else ALL_ROWS)
                 for lb in request.labels]
        c = await self.lineage.submit(request.model, items)
        return pb.SubmitLabelsResponse(joined=c.joined, pending=c.pending, unknown=c.unknown, duplicate=c.duplicate,
                                       corrected=c.corrected)


def add_feedback_service(servicer: FeedbackServicer, server) -> None:
    pb_grpc.add_FeedbackServicer_to_server(servicer, server)

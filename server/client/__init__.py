"""skewless.client: send tables of raw rows to a feature-spec model (gRPC or HTTP, on tritonclient), get the
outputs back as arrays or a table, submit delayed labels, and
record events that are never scored in a model's windowed aggregates. See docs/client.md.

Needs the ``client`` extra (tritonclient, pyarrow); pandas is used when installed. Imports nothing of the
server."""

from __future__ import annotations

from .client import FeatureClient
from .columns import ByteColumn, Column, encode_column
from .errors import ClientError, MissingColumn, MissingValuesRefused, NotAFeatureModel, UnsendableColumn
from .events import IngestReceipt
from .labels import LabelReceipt
from .results import Prediction
from .schema import MISSING_SUFFIX, ModelSchema, OutputInfo, RawInput
from .wire import WireTensor, grpc_inputs, http_inputs, request_tensors, serialize_bytes

__all__ = [
    "MISSING_SUFFIX", "ByteColumn", "ClientError", "Column", "FeatureClient", "IngestReceipt", "LabelReceipt", "MissingColumn",
    "MissingValuesRefused", "ModelSchema", "NotAFeatureModel", "OutputInfo", "Prediction", "RawInput",
    "UnsendableColumn", "WireTensor", "encode_column", "grpc_inputs", "http_inputs", "request_tensors",
    "serialize_bytes",
]

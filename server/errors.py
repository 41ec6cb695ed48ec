"""Domain errors, free of any transport: the gRPC edge maps them to status codes in one table."""

from __future__ import annotations


class SkewlessError(Exception):
    """Base of every error a request can legitimately fail with.

    ``kind`` picks the status code at each edge; ``reason`` says why a request failed, for the metrics
    (models/stats.py maps it to Triton's failure reasons)."""

    kind = "INTERNAL"
    reason = "other"


class InvalidArgument(SkewlessError):
    kind = "INVALID_ARGUMENT"


class NotFound(SkewlessError):
    kind = "NOT_FOUND"


class Unavailable(SkewlessError):
    kind = "UNAVAILABLE"


class QueueFull(Unavailable):
    """Refused at arrival: the model's queue is at its max_queue_size."""

    reason = "rejected"


class QueueTimeout(Unavailable):
    """Dropped from the queue by its queue policy's timeout, uncomputed."""

    reason = "shed"


class Overloaded(Unavailable):
    """Refused at arrival: the server already has its --max-inflight requests in flight."""

    reason = "rejected"


class InstanceHung(Unavailable):
    """A batch ran past the model's instance timeout: its requests fail and the instance is restarted."""

    reason = "backend"


class ResourceExhausted(SkewlessError):
    kind = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(SkewlessError):
    kind = "DEADLINE_EXCEEDED"
    reason = "deadline"


class Cancelled(SkewlessError):
    kind = "CANCELLED"
    reason = "cancelled"


class FailedPrecondition(SkewlessError):
    kind = "FAILED_PRECONDITION"


class Unimplemented(SkewlessError):
    kind = "UNIMPLEMENTED"


class Internal(SkewlessError):
    kind = "INTERNAL"
    reason = "backend"


class ModelLoadError(SkewlessError):
    """A model version could not be loaded; the message is what RepositoryIndex shows as the reason."""

    kind = "INVALID_ARGUMENT"


class Unauthenticated(SkewlessError):
    """No credentials, or credentials that name no one (a bad token, an unknown certificate)."""

    kind = "UNAUTHENTICATED"
    reason = "rejected"


class PermissionDenied(SkewlessError):
    """A known caller asking for what its groups do not allow (or admin from afar with no auth set up)."""

    kind = "PERMISSION_DENIED"
    reason = "rejected"

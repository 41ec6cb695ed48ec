"""Domain errors, free of any transport: the gRPC edge maps them to status codes in one table."""

from __future__ import annotations


class SkewlessError(Exception):
    """Base of every error a request can legitimately fail with."""

    kind = "INTERNAL"


class InvalidArgument(SkewlessError):
    kind = "INVALID_ARGUMENT"


class NotFound(SkewlessError):
    kind = "NOT_FOUND"


class Unavailable(SkewlessError):
    kind = "UNAVAILABLE"


class ResourceExhausted(SkewlessError):
    kind = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(SkewlessError):
    kind = "DEADLINE_EXCEEDED"


class Cancelled(SkewlessError):
    kind = "CANCELLED"


class FailedPrecondition(SkewlessError):
    kind = "FAILED_PRECONDITION"


class Unimplemented(SkewlessError):
    kind = "UNIMPLEMENTED"


class Internal(SkewlessError):
    kind = "INTERNAL"


class ModelLoadError(SkewlessError):
    """A model version could not be loaded; the message is what RepositoryIndex shows as the reason."""

    kind = "INVALID_ARGUMENT"

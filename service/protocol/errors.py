"""The error hierarchy of the gateway and its one mapping to HTTP and gRPC status codes.

Every failure a client can cause or observe is one of these; anything else is a bug and
is answered 500 with a generic message (never a traceback).
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    """Base class: carries the client-facing message and the status codes."""

    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[str] = "INTERNAL"  # name of a grpc.StatusCode member

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(GatewayError):
    """The request is malformed: shape, datatype, name, NaN, bad JSON."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class NotFound(GatewayError):
    """Unknown model, version or entity."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class PayloadTooLarge(GatewayError):
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class Unprocessable(GatewayError):
    """Well-formed, but a value is refused (e.g. a prediction outside its contract)."""

    http_status = 422
    grpc_code = "FAILED_PRECONDITION"


class Conflict(GatewayError):
    """The request contradicts the current state (e.g. unloading a version still routed to)."""

    http_status = 409
    grpc_code = "FAILED_PRECONDITION"


class Overloaded(GatewayError):
    """A queue is full: retry later."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(GatewayError):
    """Not ready, or a dependency (feature store, backend) is down."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class DeadlineExceeded(GatewayError):
    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class BackendError(GatewayError):
    """The model backend failed on a well-formed request."""

    http_status = 500
    grpc_code = "INTERNAL"

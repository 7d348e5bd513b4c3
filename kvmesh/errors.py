"""One exception tree carrying both the gRPC status code and the HTTP status.

Servicers raise them and the gRPC server's interceptor (kvmesh/grpc_server.py) ends the call with
`.grpc_code`; the OpenAI front renders `.http_status` with OpenAI's error object.
"""

from __future__ import annotations

import grpc


class KvmeshError(Exception):
    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 500
    error_type = "internal_error"

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None
    ):
        """`code`: OpenAI's error code (default: the HTTP status); `headers`: sent with the error, as
        HTTP headers or gRPC trailing metadata (e.g. Retry-After)."""
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


# Each kind: its gRPC code, HTTP status and OpenAI error type.
class InvalidArgument(KvmeshError):
    grpc_code, http_status, error_type = grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"


class NotFound(KvmeshError):
    grpc_code, http_status, error_type = grpc.StatusCode.NOT_FOUND, 404, "not_found_error"


class FailedPrecondition(KvmeshError):
    grpc_code, http_status, error_type = grpc.StatusCode.FAILED_PRECONDITION, 400, "invalid_request_error"


class ResourceExhausted(KvmeshError):
    grpc_code, http_status, error_type = grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"


class Unavailable(KvmeshError):
    grpc_code, http_status, error_type = grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable"


class Unauthenticated(KvmeshError):
    grpc_code, http_status, error_type = grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"


class PermissionDenied(KvmeshError):
    grpc_code, http_status, error_type = grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error"


class DeadlineExceeded(KvmeshError):
    """The request's deadline (the client's, or the gateway's --request-timeout-s) passed."""

    grpc_code, http_status, error_type = grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout_error"


class AtCapacity(ResourceExhausted):
    """Every worker that could take the request is full: the gateway queues it (not the client's fault)."""


_BY_GRPC_CODE = {
    cls.grpc_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        Unauthenticated,
        PermissionDenied,
        DeadlineExceeded,
    )
}
_BY_CODE_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def from_status(code: int, message: str) -> KvmeshError:
    """The error a status sent as data (a code number and a message) stands for."""
    status = _BY_CODE_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return _BY_GRPC_CODE.get(status, KvmeshError)(message or status.name)

"""One exception tree carrying both the gRPC status code and the HTTP status.

Servicers abort with `.grpc_code`; the OpenAI front renders `.http_status` with OpenAI's error object.
"""

from __future__ import annotations

import grpc


class KvmeshError(Exception):
    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidArgument(KvmeshError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400
    error_type = "invalid_request_error"


class NotFound(KvmeshError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404
    error_type = "not_found_error"


class FailedPrecondition(KvmeshError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 400
    error_type = "invalid_request_error"


class ResourceExhausted(KvmeshError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    error_type = "rate_limit_error"


class Unavailable(KvmeshError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    error_type = "service_unavailable"


class DeadlineExceeded(KvmeshError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504
    error_type = "timeout"


_BY_GRPC_CODE = {
    cls.grpc_code: cls
    for cls in (InvalidArgument, NotFound, FailedPrecondition, ResourceExhausted, Unavailable, DeadlineExceeded)
}


def from_rpc_error(error: grpc.RpcError) -> KvmeshError:
    """Turn a failed call to another service into our own error, keeping its code and message."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return _BY_GRPC_CODE.get(code, KvmeshError)(details or code.name)


_BY_CODE_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def from_status(code: int, message: str) -> KvmeshError:
    """The error a status sent as data (a code number and a message) stands for."""
    status = _BY_CODE_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return _BY_GRPC_CODE.get(status, KvmeshError)(message or status.name)

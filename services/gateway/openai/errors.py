"""One error mapper: every failure becomes OpenAI's error object with the right status, also
inside an SSE stream. Never a traceback."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from kvmesh.errors import KvmeshError
from services.gateway import metrics

log = logging.getLogger(__name__)


def error_body(message: str, error_type: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code or str(status)}}


def from_kvmesh(e: KvmeshError) -> tuple[int, dict]:
    return e.http_status, error_body(e.message, e.error_type, e.http_status, e.param, e.code)


def from_validation(e: RequestValidationError) -> tuple[int, dict]:
    first = e.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return 400, error_body(f"the body is not valid JSON: {first.get('msg')}", "invalid_request_error", 400)
    param = ".".join(loc) or None
    where = f"{param}: " if param else ""
    return 400, error_body(f"{where}{first.get('msg')}", "invalid_request_error", 400, param)


def sse_error(e: Exception) -> str:
    """The error as the last SSE event of a stream that already began."""
    if isinstance(e, KvmeshError):
        _, body = from_kvmesh(e)
    else:
        log.exception("unexpected error while streaming")
        body = error_body("internal error", "internal_error", 500)
    return f"data: {json.dumps(body)}\n\n"


def respond(status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    metrics.REQUESTS.labels("http", str(status)).inc()
    return JSONResponse(body, status_code=status, headers=headers)


def kvmesh_response(e: KvmeshError) -> JSONResponse:
    return respond(*from_kvmesh(e), e.headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(KvmeshError)
    async def _kvmesh(request: Request, e: KvmeshError) -> JSONResponse:
        return kvmesh_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        return respond(*from_validation(e))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return respond(e.status_code, error_body(str(e.detail), kind, e.status_code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return respond(500, error_body("internal error", "internal_error", 500))

"""POST /v1/chat/completions and /v1/completions without FastAPI's per-request machinery (routing,
exception middleware, exit stacks, content-type parsing, dependency solving), the largest part of
the HTTP front's CPU per request. A JSON body that msgspec decodes and the route's pydantic model
accepts goes straight to serving; anything else (another content type, a body that is not valid,
over the limit or cut short) is handed to the FastAPI route as it arrived, so every refusal is
FastAPI's own. It runs inside BearerAuth and BodyLimit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kvmesh.errors import KvmeshError
from services.gateway.openai.errors import kvmesh_response

Handler = Callable[[Request, Any], Awaitable[Response]]


class HotRoutes:
    def __init__(self, app: ASGIApp, routes: dict[str, tuple[type[BaseModel], Handler]]) -> None:
        """`routes`: by path, the body's model and what serves it (POST only)."""
        self.app, self.routes = app, routes
        self.decoder = msgspec.json.Decoder()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or not _is_json(scope["headers"]):
            await self.app(scope, receive, send)
            return
        model, handler = route
        arrived = _Arrived(receive)
        body = self._parse(model, await arrived.body())
        if body is None:
            await self.app(scope, arrived.again, send)
            return
        try:
            response = await handler(Request(scope, receive), body)
        except KvmeshError as e:  # what FastAPI's handler for it would answer (errors.install)
            response = kvmesh_response(e)
        await response(scope, receive, send)

    def _parse(self, model: type[BaseModel], body: bytes | None) -> BaseModel | None:
        if body is None:
            return None
        try:
            return model.model_validate(self.decoder.decode(body))
        except Exception:  # noqa: BLE001 - not valid (or beyond msgspec: NaN, a BOM, a lone surrogate): FastAPI decides
            return None


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    """Content-Type application/json (parameters aside), as FastAPI reads it: the first such header."""
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


class _Arrived:
    """A request's body messages as they arrive, kept to be received `again` by the app."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.messages: list[Message] = []
        self.error: Exception | None = None

    async def body(self) -> bytes | None:
        """The whole body; None when it did not all arrive (the client left, BodyLimit refused it)."""
        parts: list[bytes] = []
        try:
            while True:
                message = await self.receive()
                self.messages.append(message)
                if message["type"] != "http.request":
                    return None
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    return b"".join(parts)
        except Exception as e:  # noqa: BLE001 - raised again to the app, where it was raised before
            self.error = e
            return None

    async def again(self) -> Message:
        if self.messages:
            return self.messages.pop(0)
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return await self.receive()

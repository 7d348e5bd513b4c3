"""API keys on the OpenAI front: every /v1/ call shows `Authorization: Bearer <key>` of a user or
admin key before anything of its body is read; the key rides in the request's state as `caller`.
/health and /metrics stay open (probes and Prometheus)."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from kvmesh import auth
from kvmesh.errors import KvmeshError, Unauthenticated
from services.gateway import metrics
from services.gateway.openai.errors import from_kvmesh


class BearerAuth:
    def __init__(self, app: ASGIApp, authenticator: auth.Authenticator) -> None:
        self.app, self.authenticator = app, authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        try:
            caller = await self.authenticator.identify(authorization)
            auth.permit(caller, auth.USER, scope["path"])
        except KvmeshError as e:
            status, body = from_kvmesh(e)
            challenge = {"WWW-Authenticate": "Bearer"} if isinstance(e, Unauthenticated) else None
            metrics.REQUESTS.labels("http", str(status)).inc()
            await JSONResponse(body, status_code=status, headers=challenge)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)

"""The OpenAI-compatible HTTP app: routes only; the work is in serving.py."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kvmesh.auth import Authenticator
from services.gateway.openai import errors
from services.gateway.openai.bearer_auth import BearerAuth
from services.gateway.openai.body_limit import BodyLimit
from services.gateway.openai.hot_routes import HotRoutes
from services.gateway.openai.protocol import ChatCompletionRequest, CompletionRequest
from services.gateway.openai.serving import OpenAIServing
from services.gateway.served import ServedModels


def create_app(
    served: ServedModels, serving: OpenAIServing, max_body_bytes: int, authenticator: Authenticator | None = None
) -> FastAPI:
    """`authenticator`: API keys on /v1/ (kvmesh/auth.py); None: auth is off."""
    app = FastAPI(title="kvmesh gateway", docs_url=None, redoc_url=None)
    errors.install(app)
    # The last added runs first: keys, then the body limit, then the hot routes, then FastAPI's routing.
    hot = {
        "/v1/chat/completions": (ChatCompletionRequest, serving.chat),
        "/v1/completions": (CompletionRequest, serving.completions),
    }
    app.add_middleware(HotRoutes, routes=hot)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if authenticator is not None:
        app.add_middleware(BearerAuth, authenticator=authenticator)
    started = int(time.time())

    # Served by HotRoutes; here for the bodies it hands on (FastAPI's refusals) and /openapi.json.
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest):
        return await serving.chat(request, body)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest):
        return await serving.completions(request, body)

    @app.get("/v1/models")
    async def list_models(request: Request):
        caller = getattr(request.state, "caller", None)
        data = []
        for name, records in served.live().items():
            if caller is not None and not caller.may_use(name):
                continue
            entry = {"id": name, "object": "model", "created": started, "owned_by": "kvmesh", "workers": len(records)}
            if records:
                entry["max_model_len"] = min(r.max_model_len for r in records)
            data.append(entry)
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        live = served.live()
        ready = all(live.values())
        body = {"status": "ok" if ready else "no_workers", "workers": {k: len(v) for k, v in live.items()}}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app

"""HotRoutes against the app without it (FastAPI's routes alone): every request gets the same
status, headers and body, and the same parsed body reaches serving; a JSON body that decodes and
validates is served without FastAPI's routing, anything else by FastAPI as before."""

import asyncio
import json
from types import SimpleNamespace

import httpx
import pytest
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY

from kvmesh.errors import NotFound, ResourceExhausted
from services.gateway.openai.hot_routes import HotRoutes
from services.gateway.openai.routes import create_app

MAX_BODY_BYTES = 1000
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Hi"}]
JSON_TYPE = {"content-type": "application/json"}


class FakeServing:
    """Records each body it is given and whether FastAPI's router passed it on."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict, bool]] = []

    async def chat(self, request, body):
        return self._serve("chat", request, body)

    async def completions(self, request, body):
        return self._serve("completions", request, body)

    def _serve(self, route: str, request, body) -> JSONResponse:
        self.seen.append((route, body.model_dump(), "endpoint" in request.scope))  # FastAPI's router sets it
        if body.model == "gone":
            raise NotFound("no model named gone", param="model")
        if body.model == "busy":
            raise ResourceExhausted("slow down", headers={"retry-after": "1"})
        return JSONResponse({"route": route, "model": body.model}, headers={"x-ratelimit-remaining-requests": "9"})


def apps() -> tuple[tuple, tuple]:
    """(app, its serving) with HotRoutes and without it."""
    with_hot, without = FakeServing(), FakeServing()
    hot_app, fastapi_app = (create_app(SimpleNamespace(), s, MAX_BODY_BYTES) for s in (with_hot, without))
    fastapi_app.user_middleware = [m for m in fastapi_app.user_middleware if m.cls is not HotRoutes]
    return (hot_app, with_hot), (fastapi_app, without)


def chat(**fields) -> bytes:
    return json.dumps({"model": "m", "messages": MESSAGES, "max_tokens": 4, **fields}).encode()


CASES = [
    # name, path, headers, body, served here (not by FastAPI)
    ("chat", CHAT, JSON_TYPE, chat(stream=True, stream_options={"include_usage": True}), True),
    ("completion of token ids", "/v1/completions", JSON_TYPE, b'{"model": "m", "prompt": [1, 2]}', True),
    ("charset", CHAT, {"content-type": "Application/JSON; charset=utf-8"}, chat(), True),
    ("values pydantic coerces", CHAT, JSON_TYPE, chat(max_tokens="16", stream="true", temperature=1), True),
    ("unknown fields", CHAT, JSON_TYPE, chat(metadata={"a": 1}, messages=[{"role": "user", "name": "x"}]), True),
    ("an error from serving", CHAT, JSON_TYPE, chat(model="gone"), True),
    ("an error with headers", CHAT, JSON_TYPE, chat(model="busy"), True),
    ("NaN, beyond msgspec", CHAT, JSON_TYPE, chat()[:-1] + b', "temperature": NaN}', False),
    ("a byte order mark", CHAT, JSON_TYPE, b"\xef\xbb\xbf" + chat(), False),
    ("malformed JSON", CHAT, JSON_TYPE, b'{"model": "m", "messages": [', False),
    ("not UTF-8", CHAT, JSON_TYPE, b'{"model": "\xff"}', False),
    ("missing model", CHAT, JSON_TYPE, json.dumps({"messages": MESSAGES}).encode(), False),
    ("unknown role", CHAT, JSON_TYPE, chat(messages=[{"role": "robot", "content": "x"}]), False),
    ("not an object", CHAT, JSON_TYPE, b"[1, 2]", False),
    ("empty", CHAT, JSON_TYPE, b"", False),
    ("another content type", CHAT, {"content-type": "text/plain"}, chat(), False),
    ("a +json content type", CHAT, {"content-type": "application/vnd.api+json"}, chat(), False),
    ("no content type", CHAT, {}, chat(), False),
    ("over the body limit", CHAT, JSON_TYPE, chat(messages=[{"role": "user", "content": "x" * 2000}]), False),
]


@pytest.mark.parametrize("name, path, headers, body, served_here", CASES, ids=[c[0] for c in CASES])
async def test_the_same_answer_as_fastapi_alone(name, path, headers, body, served_here):
    answers = []
    for hot, (app, serving) in zip((True, False), apps(), strict=True):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client:
            r = await client.post(path, content=body, headers=headers)
        answers.append(((r.status_code, r.headers.multi_items(), r.content), [s[:2] for s in serving.seen]))
        if hot:
            ways = [via_fastapi for *_, via_fastapi in serving.seen]
            assert ways == [False] if served_here else ways in ([], [True])
    assert answers[0] == answers[1]


async def test_other_methods_and_paths_are_fastapis():
    for method, path in [("GET", CHAT), ("POST", CHAT + "/"), ("POST", "/v1/embeddings")]:
        answers = []
        for app, _ in apps():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client:
                r = await client.request(method, path, content=chat(), headers=JSON_TYPE, follow_redirects=False)
            answers.append((r.status_code, r.headers.multi_items(), r.content))
        assert answers[0] == answers[1] and answers[0][0] in (404, 405, 307)


async def test_an_error_from_serving_is_counted_once():
    (app, _), _ = apps()

    def count() -> float:
        return REGISTRY.get_sample_value("kvmesh_gateway_requests_total", {"front": "http", "status": "404"}) or 0

    before = count()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client:
        assert (await client.post(CHAT, content=chat(model="gone"), headers=JSON_TYPE)).status_code == 404
    assert count() == before + 1


async def test_a_chunked_body_over_the_limit_is_refused_as_before():
    async def chunks():
        for _ in range(100):
            yield b"x" * 64

    answers = []
    for app, _ in apps():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client:
            r = await client.post(CHAT, content=chunks(), headers=JSON_TYPE)
        answers.append((r.status_code, r.content))
    assert answers[0] == answers[1] and answers[0][0] == 413


async def asgi_call(app, scope: dict, arriving: list[dict]) -> list[dict]:
    """What `app` sends when `arriving` is what the client sent, then nothing more."""
    sent: list[dict] = []

    async def receive():
        return arriving.pop(0) if arriving else await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_a_client_gone_mid_body_is_answered_as_before():
    """The messages that came are what FastAPI receives."""
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": ("gw", 80),
    }  # fmt: skip
    answers = []
    for app, serving in apps():
        arriving = [{"type": "http.request", "body": chat()[:10], "more_body": True}, {"type": "http.disconnect"}]
        answers.append(await asgi_call(app, dict(scope, state={}), arriving))
        assert serving.seen == []
    assert answers[0] == answers[1] and answers[0][0]["status"] == 400

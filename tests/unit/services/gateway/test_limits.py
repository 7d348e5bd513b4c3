"""Each hard limit: at the limit passes, one over is refused naming the limit's flag; and the HTTP
body limit refuses a body by its declared length unread, or as a chunked one arrives."""

import httpx
import pytest
from fastapi import FastAPI, Request

from kvmesh.errors import InvalidArgument
from services.gateway.limits import InputLimits
from services.gateway.openai import errors
from services.gateway.openai.body_limit import BodyLimit
from services.gateway.sampling import Sampling

LIMITS = InputLimits(max_messages=2, max_prompt_chars=10, max_stop_strings=2, max_stop_chars=3, max_stop_token_ids=2)


@pytest.mark.parametrize(
    "check, at_limit, over, flag",
    [
        (LIMITS.check_messages, 2, 3, "--max-messages"),
        (lambda n: LIMITS.check_prompt_chars(n, "prompt"), 10, 11, "--max-prompt-chars"),
        (lambda n: LIMITS.check_sampling(Sampling(stop=["a"] * n)), 2, 3, "--max-stop-strings"),
        (lambda n: LIMITS.check_sampling(Sampling(stop=["x" * n])), 3, 4, "--max-stop-chars"),
        (lambda n: LIMITS.check_sampling(Sampling(stop_token_ids=[1] * n)), 2, 3, "--max-stop-token-ids"),
    ],
)  # fmt: skip
def test_at_the_limit_passes_and_one_over_is_refused_naming_it(check, at_limit, over, flag):
    check(at_limit)
    with pytest.raises(InvalidArgument, match=flag):
        check(over)


def app(max_bytes: int) -> FastAPI:
    made = FastAPI()
    errors.install(made)
    made.add_middleware(BodyLimit, max_bytes=max_bytes)

    @made.post("/echo")
    async def echo(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    return made


async def test_a_body_at_the_limit_is_read_and_one_over_is_refused_with_413():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app(100)), base_url="http://gw") as client:
        assert (await client.post("/echo", content=b"x" * 100)).json() == {"bytes": 100}
        refused = await client.post("/echo", content=b"x" * 101)
    assert refused.status_code == 413 and "--max-body-bytes" in refused.json()["error"]["message"]


async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit():
    sent = []

    async def chunks():
        for _ in range(1000):
            sent.append(1)
            yield b"x" * 64

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app(100)), base_url="http://gw") as client:
        refused = await client.post("/echo", content=chunks())
    assert refused.status_code == 413 and "--max-body-bytes" in refused.json()["error"]["message"]
    assert len(sent) < 10, f"{len(sent)} chunks read: the rest of the body should not be"

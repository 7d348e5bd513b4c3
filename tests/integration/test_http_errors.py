"""Every bad input gets an OpenAI error object with the right status; the next request works."""

import httpx
import pytest

MODEL = "smollm2-135m-instruct"
GOOD_MESSAGES = [{"role": "user", "content": "Hi"}]


def chat(**overrides):
    return {"model": MODEL, "messages": GOOD_MESSAGES, "max_tokens": 4, **overrides}


CASES = [
    ("malformed JSON", "/v1/chat/completions", b'{"model": "x", "messages": [', 400, None),
    ("missing model", "/v1/chat/completions", {"messages": GOOD_MESSAGES}, 400, "model"),
    ("unknown model", "/v1/chat/completions", chat(model="gpt-17"), 404, "model"),
    ("empty messages", "/v1/chat/completions", chat(messages=[]), 400, "messages"),
    (
        "unknown role",
        "/v1/chat/completions",
        chat(messages=[{"role": "robot", "content": "x"}]),
        400,
        "messages.0.role",
    ),
    ("messages not a list", "/v1/chat/completions", chat(messages="hello"), 400, "messages"),
    ("content wrong type", "/v1/chat/completions", chat(messages=[{"role": "user", "content": 5}]), 400, None),
    (
        "prompt longer than context",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": "word " * 5000}]),
        400,
        "messages",
    ),
    ("max_tokens zero", "/v1/chat/completions", chat(max_tokens=0), 400, "max_tokens"),
    ("max_tokens negative", "/v1/chat/completions", chat(max_tokens=-1), 400, "max_tokens"),
    ("max_tokens above the limit", "/v1/chat/completions", chat(max_tokens=10**6), 400, "max_tokens"),
    ("max_tokens wrong type", "/v1/chat/completions", chat(max_tokens="many"), 400, "max_tokens"),
    ("temperature too high", "/v1/chat/completions", chat(temperature=3), 400, "temperature"),
    ("temperature negative", "/v1/chat/completions", chat(temperature=-1), 400, "temperature"),
    ("top_p zero", "/v1/chat/completions", chat(top_p=0), 400, "top_p"),
    ("top_p above one", "/v1/chat/completions", chat(top_p=1.5), 400, "top_p"),
    ("n above one", "/v1/chat/completions", chat(n=2), 400, "n"),
    ("logprobs", "/v1/chat/completions", chat(logprobs=True), 400, "logprobs"),
    ("stream wrong type", "/v1/chat/completions", chat(stream="yes please"), 400, "stream"),
    ("completion without prompt", "/v1/completions", {"model": MODEL}, 400, "prompt"),
    ("completion with bad token id", "/v1/completions", {"model": MODEL, "prompt": [10**9]}, 400, "prompt"),
    ("completion empty prompt", "/v1/completions", {"model": MODEL, "prompt": ""}, 400, "prompt"),
    ("unknown path", "/v1/embeddings", {"model": MODEL}, 404, None),
]


@pytest.mark.parametrize("name, path, body, status, param", CASES, ids=[c[0] for c in CASES])
def test_bad_input(mesh, name, path, body, status, param):
    with httpx.Client(base_url=mesh.http, timeout=30) as http:
        if isinstance(body, bytes):
            r = http.post(path, content=body, headers={"content-type": "application/json"})
        else:
            r = http.post(path, json=body)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["message"] and error["type"]
        assert "Traceback" not in r.text
        if param:
            assert error["param"] == param
        ok = http.post("/v1/chat/completions", json=chat())
        assert ok.status_code == 200, ok.text

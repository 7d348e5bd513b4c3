"""Generated bad (and good) input against the mesh's two HTTP fronts, counting every answer:
schemathesis cases from the REST front's OpenAPI document, and a hypothesis suite of OpenAI
request bodies in which every field is either valid or junk. A finding is a 5xx for a client's
request, an error body that is not the front's documented error shape, or a 200 whose body is
not what the endpoint promises. bench/fuzz.py runs many cases; tests/integration/test_fuzz.py a sample."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# A router asked for a model no live worker serves cannot tell a typo from a model whose workers
# are all restarting (it keeps no catalog; the gateway does, and answers 404): UNAVAILABLE is
# right there, so these are counted, not findings.
NO_WORKER_503 = "no live worker"
# The mesh fuzzed: simulated workers, fast, with a short context so that a junk max_tokens is
# refused rather than decoded for minutes.
# --rest-internal: every operation of the OpenAPI document is served, the router's included; with
# --auth on, as an exposed mesh runs (the fuzzer shows the admin key: every operation is reached).
SIM_MESH_ARGS = ("--engine", "sim", "--engine-args", '{"max_model_len": 512, "timing": {"speedup": 1000}}',
                 "--rest-internal", "--auth", "on")  # fmt: skip


def key_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)  # (operation, status) → cases
    findings: list[str] = field(default_factory=list)
    router_no_worker: int = 0

    @property
    def cases(self) -> int:
        return sum(self.statuses.values())

    def add(self, operation: str, response: httpx.Response, body, problem: str | None) -> None:
        self.statuses[(operation, response.status_code)] += 1
        if problem:
            self.findings.append(f"{operation} → {response.status_code}: {problem}; body sent: {body!r:.300}")


def _settings(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


# --- REST (grpc-gateway) ---------------------------------------------------------------------


def fuzz_rest(rest_url: str, openapi: Path, examples_per_operation: int, headers: dict | None = None) -> Tally:
    tally = Tally()
    schema = schemathesis.openapi.from_path(str(openapi))
    with httpx.Client(base_url=rest_url, timeout=60, headers=headers) as client:
        for result in schema.get_all_operations():
            operation = result.ok()
            _fuzz_operation(client, operation, examples_per_operation, tally)
    return tally


def _fuzz_operation(client: httpx.Client, operation, examples: int, tally: Tally) -> None:
    @given(case=operation.as_strategy())
    @_settings(examples)
    def one(case) -> None:
        path = case.formatted_path
        kwargs = {"params": case.query or None}
        if case.body is not None and not isinstance(case.body, schemathesis.core.NotSet):
            kwargs["json"] = case.body
        response = client.request(case.method, path, **kwargs)
        problem = _rest_problem(response)
        if response.status_code == 503 and NO_WORKER_503 in response.text:
            tally.router_no_worker += 1
            problem = None
        tally.add(operation.label, response, case.body, problem)

    one()


def _rest_problem(response: httpx.Response) -> str | None:
    if response.status_code >= 500:
        return "server error"
    try:
        messages = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        return "not JSON" if response.status_code != 404 else None  # unknown paths answer "Not Found"
    if response.status_code >= 400:
        # A unary call's error is {"error", "code", "message"}; a stream's is {"error": {... "message"}}.
        first = messages[0] if messages else {}
        error = first.get("error")
        if not (first.get("message") or (isinstance(error, dict) and error.get("message"))):
            return "error without a message"
    elif not messages:
        return "empty 200"
    return None


# --- OpenAI HTTP ------------------------------------------------------------------------------

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def _mutated(draw, valid: st.SearchStrategy, junk_keys: list[str]) -> dict:
    """A valid body, then none, one or two fields set to junk (or a stray one added): mistakes one
    or two at a time, as clients make them, and valid requests that run on the engine."""
    body = draw(valid)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        body[draw(st.sampled_from(junk_keys) | st.text(max_size=6))] = draw(JUNK)
    return body


def _fields(model: str) -> dict[str, st.SearchStrategy]:
    return {
        "model": st.just(model),
        "max_tokens": st.integers(1, 8),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "top_k": st.integers(-1, 50),
        "n": st.just(1),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=4),
        "seed": st.integers(0, 2**31),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "ignore_eos": st.booleans(),
        "stop_token_ids": st.lists(st.integers(0, 49151), max_size=3),
        "user": st.text(max_size=8),
    }


def _message() -> st.SearchStrategy:
    parts = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=40)}), max_size=2)
    role = st.sampled_from(["system", "developer", "user", "assistant"])
    return st.fixed_dictionaries({"role": role, "content": st.text(max_size=120) | parts})


def chat_bodies(model: str) -> st.SearchStrategy:
    fields = {
        **_fields(model),
        "messages": st.lists(_message(), min_size=1, max_size=3),
        "max_completion_tokens": st.integers(1, 8),
        "logprobs": st.just(False),
    }
    required = {k: fields.pop(k) for k in ("model", "messages")}
    return _mutated(st.fixed_dictionaries(required, optional=fields), [*required, *fields])


def completion_bodies(model: str) -> st.SearchStrategy:
    fields = _fields(model)
    prompts = st.text(max_size=120) | st.lists(st.integers(0, 49151), min_size=1, max_size=40)
    required = {"model": fields.pop("model"), "prompt": prompts}
    return _mutated(st.fixed_dictionaries(required, optional=fields), [*required, *fields])


RAW = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    st.sampled_from([b"[]", b"null", b"42", b'"text"', b"{}", b'{"model": ', b"\xff\xfe"]),
)


def fuzz_openai(http_url: str, model: str, examples: int, headers: dict | None = None) -> Tally:
    tally = Tally()
    endpoints = {"/v1/chat/completions": chat_bodies(model), "/v1/completions": completion_bodies(model)}
    with httpx.Client(base_url=http_url, timeout=60, headers=headers) as client:
        for path, bodies in endpoints.items():
            _fuzz_endpoint(client, path, bodies, examples, tally)
    return tally


def _fuzz_endpoint(client: httpx.Client, path: str, bodies: st.SearchStrategy, examples: int, tally: Tally) -> None:
    def post(content: bytes) -> httpx.Response:
        return client.post(path, content=content, headers={"content-type": "application/json"})

    @given(body=bodies)
    @_settings(examples)
    def one_body(body) -> None:
        response = post(json.dumps(body, allow_nan=True).encode())
        tally.add(f"POST {path}", response, body, _openai_problem(response, body))

    @given(raw=RAW)
    @_settings(max(examples // 10, 1))
    def one_raw(raw) -> None:
        response = post(raw)
        tally.add(f"POST {path} (raw bytes)", response, raw, _openai_problem(response, {}))

    one_body()
    one_raw()


def _openai_problem(response: httpx.Response, body) -> str | None:
    if response.status_code >= 500:
        return "server error"
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return "not OpenAI's error object"
        if not error.get("message") or not {"type", "param", "code"} <= error.keys():
            return "incomplete error object"
        return None
    if isinstance(body, dict) and body.get("stream") is True:
        return _sse_problem(response.text)
    try:
        reply = response.json()
    except json.JSONDecodeError:
        return "200 that is not JSON"
    if not reply.get("choices") or "usage" not in reply:
        return "200 without choices or usage"
    return None


def _sse_problem(text: str) -> str | None:
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return "stream not ended by [DONE]"
    for event in events[:-1]:
        if "error" in json.loads(event):
            return f"error event in a 200 stream: {event:.200}"
    return None


def crashes(log_dir: Path) -> list[str]:
    """Service restarts (kvmesh up's log) and tracebacks in any service's log."""
    up = (log_dir / "up.log").read_text(errors="replace")
    found = [line for line in up.splitlines() if "exited with code" in line]
    for log in sorted(log_dir.glob("*.log")):
        tracebacks = log.read_text(errors="replace").count("Traceback")
        found += [f"{log.name}: {tracebacks} tracebacks"] if tracebacks else []
    return found


def healthy(http_url: str, rest_url: str, model: str, headers: dict | None = None) -> bool:
    """The mesh still answers a plain request on both fronts."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    chat = httpx.post(f"{http_url}/v1/chat/completions", json=body, timeout=60, headers=headers)
    models = httpx.get(f"{rest_url}/v1/kvmesh/models", timeout=10, headers=headers)
    return chat.status_code == 200 and models.status_code == 200

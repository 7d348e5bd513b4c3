"""The REST front (the Go grpc-gateway that `kvmesh up` starts) in front of the real services and
the real vLLM workers: unary and streaming calls, errors, disconnect cancellation, the OpenAPI
document it serves."""

import json
import re
import uuid

import grpc
import httpx
import pytest
from google.protobuf import wrappers_pb2

from kvmesh.cli import rest_front
from kvmesh.v1 import inference_pb2, inference_pb2_grpc, router_pb2, router_pb2_grpc
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def rest(mesh):
    with httpx.Client(base_url=mesh.rest, timeout=60) as client:
        yield client


def lines(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_models_and_workers(rest, mesh):
    models = rest.get("/v1/kvmesh/models").json()["models"]
    assert [(m["id"], m["workers"]) for m in models] == [(mesh.model, 2)]
    workers = rest.get("/v1/router/workers").json()["workers"]
    assert {w["record"]["role"] for w in workers} == {"ROLE_AGGREGATED"} and len(workers) == 2
    stats = rest.get("/v1/kvindex/stats").json()
    assert {w["worker_id"] for w in stats["workers"]} == {w["record"]["id"] for w in workers}


def test_generate_streams_ndjson_with_the_same_tokens_as_grpc(rest, mesh):
    ids = [504, 3575, 282, 4649, 314]
    body = {"model": mesh.model, "token_ids": {"ids": ids}, "sampling": {"max_tokens": 12, "temperature": 0}}
    response = rest.post("/v1/kvmesh/generate", json=body)
    assert response.status_code == 200, response.text
    messages = [m["result"] for m in lines(response)]
    assert len(messages) > 1  # streamed, one line per delta
    assert messages[-1]["finish_reason"] in ("FINISH_REASON_LENGTH", "FINISH_REASON_STOP")
    assert messages[-1]["usage"]["prompt_tokens"] == len(ids)
    tokens = [t for m in messages for t in m["token_ids"]]
    assert messages[-1]["usage"]["completion_tokens"] == len(tokens)
    with grpc.insecure_channel(mesh.grpc) as channel:
        request = inference_pb2.GenerateRequest(
            model=mesh.model,
            token_ids=inference_pb2.TokenIds(ids=ids),
            sampling=inference_pb2.SamplingParams(
                max_tokens=wrappers_pb2.UInt32Value(value=12), temperature=wrappers_pb2.FloatValue(value=0.0)
            ),
        )
        over_grpc = [t for r in inference_pb2_grpc.InferenceStub(channel).Generate(request) for t in r.token_ids]
    assert tokens == over_grpc


def test_chat_answers(rest, mesh):
    body = {
        "model": mesh.model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "sampling": {"max_tokens": 24, "temperature": 0},
    }
    messages = [m["result"] for m in lines(rest.post("/v1/kvmesh/chat", json=body))]
    assert "Paris" in "".join(m["text"] for m in messages)


@pytest.mark.parametrize(
    "path, body, status, says",
    [
        ("/v1/kvmesh/generate", {"model": "smollm2-135m-instruct", "text": "Hi", "sampling": {"temperature": 7}}, 400,
         "temperature"),
        ("/v1/kvmesh/generate", {"model": "gpt-17", "text": "Hi"}, 404, "gpt-17"),
        ("/v1/kvmesh/chat", {"model": "smollm2-135m-instruct", "messages": []}, 400, "messages"),
        ("/v1/kvmesh/generate", b'{"model": ', 400, "unexpected EOF"),
        # grpc-gateway 1.6's JSON decoder does not name the field.
        ("/v1/kvmesh/generate", {"model": "smollm2-135m-instruct", "text": 5}, 400, "cannot unmarshal number"),
        ("/v1/router/route", {"model": "no-such-model", "request_id": "r1"}, 503, "no-such-model"),
        ("/v1/nowhere", {}, 404, "Not Found"),
    ],
    ids=["out of range", "unknown model", "no messages", "malformed JSON", "wrong type", "no worker", "no route"],
)  # fmt: skip
def test_errors_map_to_http_status(rest, path, body, status, says):
    if isinstance(body, bytes):
        response = rest.post(path, content=body)
    else:
        response = rest.post(path, json=body)
    assert response.status_code == status, response.text
    assert says in response.text
    assert rest.get("/v1/kvmesh/models").status_code == 200  # and it keeps serving


def test_a_router_session_answers_each_route_and_sums_up(rest, mesh):
    messages = [
        {"route": {"model": mesh.model, "request_id": "s1", "num_tokens": 4}},
        {"route": {"model": "no-such-model", "request_id": "s2"}},
        {
            "more": [
                {"released": "s1"},
                {"route": {"model": mesh.model, "request_id": "s3", "num_tokens": 4}},
                {"released": "s3"},
            ]
        },
    ]
    response = rest.post("/v1/router/session", content="\n".join(json.dumps(m) for m in messages))
    assert response.status_code == 200, response.text
    answers = [line["result"] for line in lines(response)]
    nested = [a for answer in answers for a in answer.get("more", [])]  # answers decided together
    by_id = {a["request_id"]: a for a in answers + nested if a.get("request_id")}
    assert by_id["s1"]["route"]["worker"]["model"] == by_id["s3"]["route"]["worker"]["model"] == mesh.model
    assert by_id["s2"]["error"]["code"] == grpc.StatusCode.UNAVAILABLE.value[0] and "no-such-model" in str(by_id["s2"])
    assert answers[-1]["summary"] == {"routed": 3, "prefilled": 0, "released": 2}
    refused = rest.post("/v1/router/session", json={})
    assert (
        refused.status_code == 400 and "one of route, prefilled, released, release, settings (or more)" in refused.text
    )
    wait_router_idle(mesh, "every routed request released")


def test_closing_the_connection_cancels_the_request_in_the_engine(mesh):
    request_id = f"rest-cancel-{uuid.uuid4().hex[:8]}"
    body = {
        "model": mesh.model,
        "text": "Count slowly from one to one thousand:",
        "sampling": {"max_tokens": 2000, "ignore_eos": True},
        "request_id": request_id,
    }
    with httpx.Client(base_url=mesh.rest, timeout=60) as client:
        with client.stream("POST", "/v1/kvmesh/generate", json=body) as r:
            assert r.status_code == 200
            assert json.loads(next(r.iter_lines()))["result"]["request_id"] == request_id
    # The gateway's gRPC stream is cancelled, then Triton's, then the engine aborts it.
    wait_for(
        lambda: any(
            re.search(rf"request {request_id}\.[0-9a-f]+: cancelled by the client", mesh.log(f"worker-{i}"))
            for i in range(2)
        ),
        timeout_s=10,
        what="the engine aborting the request",
    )
    wait_router_idle(mesh, "the router releasing it")


def wait_router_idle(mesh, what: str) -> None:
    with grpc.insecure_channel(mesh.router) as channel:
        router = router_pb2_grpc.RouterStub(channel)
        wait_for(
            lambda: sum(w.in_flight for w in router.Workers(router_pb2.WorkersRequest()).workers) == 0,
            timeout_s=10,
            what=what,
        )


def test_openapi_document_is_served(rest):
    response = rest.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.content == rest_front.OPENAPI.read_bytes()

"""The native gRPC API (kvmesh.v1.Inference / Models) on the real engine."""

import grpc
import pytest
from google.protobuf import wrappers_pb2

from kvmesh.v1 import inference_pb2, inference_pb2_grpc, models_pb2, models_pb2_grpc
from tests.integration.conftest import WORKERS


@pytest.fixture(scope="module")
def channel(mesh):
    with grpc.insecure_channel(mesh.grpc) as ch:
        yield ch


def sampling(**kw):
    return inference_pb2.SamplingParams(
        max_tokens=wrappers_pb2.UInt32Value(value=kw.get("max_tokens", 16)),
        temperature=wrappers_pb2.FloatValue(value=kw.get("temperature", 0.0)),
    )


def test_generate_streams_text_and_tokens(channel, mesh):
    stub = inference_pb2_grpc.InferenceStub(channel)
    replies = list(
        stub.Generate(
            inference_pb2.GenerateRequest(
                model=mesh.model, text="The capital of France is", sampling=sampling(max_tokens=12)
            )
        )
    )
    assert len(replies) > 2  # streamed, not one blob
    assert all(r.finish_reason == inference_pb2.FINISH_REASON_UNSPECIFIED for r in replies[:-1])
    last = replies[-1]
    assert last.finish_reason in (inference_pb2.FINISH_REASON_STOP, inference_pb2.FINISH_REASON_LENGTH)
    assert last.usage.completion_tokens == sum(len(r.token_ids) for r in replies)
    assert "".join(r.text for r in replies).strip()
    assert last.worker_id


def test_chat_streams(channel, mesh):
    stub = inference_pb2_grpc.InferenceStub(channel)
    request = inference_pb2.ChatRequest(
        model=mesh.model,
        messages=[inference_pb2.ChatMessage(role="user", content="What is the capital of France?")],
        sampling=sampling(max_tokens=20),
    )
    replies = list(stub.Chat(request))
    assert replies[0].role == "assistant"
    assert "Paris" in "".join(r.text for r in replies)


@pytest.mark.parametrize(
    "request_kwargs, code",
    [
        ({"model": "nope", "text": "hi"}, grpc.StatusCode.NOT_FOUND),
        ({"text": "hi"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": None}, grpc.StatusCode.INVALID_ARGUMENT),  # no prompt
        ({"model": None, "text": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": None, "text": "hi", "sampling": sampling(max_tokens=0)}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": None, "text": "hi", "sampling": sampling(temperature=9)}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": None, "text": "hi " * 5000}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": None, "token_ids": inference_pb2.TokenIds(ids=[10**9])}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_requests_get_clear_statuses_and_service_keeps_serving(channel, mesh, request_kwargs, code):
    if "model" in request_kwargs and request_kwargs["model"] is None:
        request_kwargs = {**request_kwargs, "model": mesh.model}
    stub = inference_pb2_grpc.InferenceStub(channel)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Generate(inference_pb2.GenerateRequest(**request_kwargs)))
    assert e.value.code() == code
    assert e.value.details() and "Traceback" not in e.value.details()
    ok = list(
        stub.Generate(inference_pb2.GenerateRequest(model=mesh.model, text="Hi", sampling=sampling(max_tokens=2)))
    )
    assert ok[-1].usage.completion_tokens > 0


def test_models_list(channel, mesh):
    reply = models_pb2_grpc.ModelsStub(channel).List(models_pb2.ModelsListRequest())
    assert [(m.id, m.workers) for m in reply.models] == [(mesh.model, WORKERS)]
    assert reply.models[0].kv_block_size == 128 and reply.models[0].max_model_len == 4096

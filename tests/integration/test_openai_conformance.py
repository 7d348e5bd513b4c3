"""The official openai client, sync and async, against the gateway on the real engine: every
parameter kvmesh accepts does what OpenAI documents, the ones it refuses give OpenAI's error."""

import asyncio

import openai
import pytest

CHAT = [{"role": "user", "content": "Write a short poem about the sea."}]


@pytest.fixture(scope="module")
def client(mesh):
    return openai.OpenAI(base_url=f"{mesh.http}/v1", api_key="unused", max_retries=0)


@pytest.fixture
async def aclient(mesh):
    async with openai.AsyncOpenAI(base_url=f"{mesh.http}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
def test_token_limit_ends_with_length(client, mesh, limit):
    body = {"model": mesh.model, "messages": CHAT, "extra_body": {"ignore_eos": True}, limit: 5}
    reply = client.chat.completions.create(**body)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5


async def test_async_chat_and_completion(aclient, mesh):
    chat, completion = await asyncio.gather(
        aclient.chat.completions.create(model=mesh.model, messages=CHAT, max_tokens=8),
        aclient.completions.create(model=mesh.model, prompt="The sky is", max_tokens=8),
    )
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content and chat.choices[0].finish_reason in ("stop", "length")
    assert completion.object == "text_completion" and completion.choices[0].text
    assert completion.usage.completion_tokens <= 8


@pytest.mark.parametrize("include_usage", [True, False])
async def test_async_streams_with_and_without_usage(aclient, mesh, include_usage):
    options = {"include_usage": include_usage}
    chat = [c async for c in await aclient.chat.completions.create(
        model=mesh.model, messages=CHAT, max_tokens=6, stream=True, stream_options=options)]  # fmt: skip
    completion = [c async for c in await aclient.completions.create(
        model=mesh.model, prompt="Once upon a time", max_tokens=6, stream=True, stream_options=options)]  # fmt: skip
    for stream in (chat, completion):
        usage = [c.usage for c in stream if c.usage is not None]
        if include_usage:
            assert len(usage) == 1 and stream[-1].choices == [] and 0 < usage[0].completion_tokens <= 6
        else:
            assert usage == []
        assert [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason] in (
            ["stop"],
            ["length"],
        )
    assert "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
    assert "".join(c.choices[0].text for c in completion if c.choices)


def test_stop_string_on_chat(client, mesh):
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    free = client.chat.completions.create(model=mesh.model, messages=messages, max_tokens=40, temperature=0)
    assert "5" in free.choices[0].message.content  # without stop it goes past 5
    reply = client.chat.completions.create(model=mesh.model, messages=messages, max_tokens=40, temperature=0, stop="5")
    assert "5" not in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"


def test_tiny_top_p_is_greedy(client, mesh):
    def text(**sampling):
        reply = client.completions.create(model=mesh.model, prompt="My favourite food is", max_tokens=12, **sampling)
        return reply.choices[0].text

    greedy = text(temperature=0)
    assert text(temperature=1.0, top_p=0.001, seed=1) == greedy == text(temperature=1.0, top_p=0.001, seed=2)


def test_different_seeds_sample_differently(client, mesh):
    texts = {
        client.completions.create(model=mesh.model, prompt="A random word:", max_tokens=12, temperature=1.0, seed=seed)
        .choices[0]
        .text
        for seed in (1, 2, 3)
    }
    assert len(texts) > 1


@pytest.mark.parametrize(
    "extra, param",
    [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"top_p": 0}, "top_p"), ({"temperature": 2.5}, "temperature")],
)
def test_refusals_are_openai_errors(client, mesh, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=mesh.model, messages=CHAT, max_tokens=4, **extra)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["param"] == param and error["type"] == "invalid_request_error" and param in error["message"]


async def test_unknown_model_is_404_with_the_error_object(aclient):
    with pytest.raises(openai.NotFoundError) as caught:
        await aclient.chat.completions.create(model="gpt-17", messages=CHAT)
    assert set(caught.value.body) >= {"message", "type", "param", "code"} and caught.value.body["param"] == "model"


async def test_async_models_list(aclient, mesh):
    models = await aclient.models.list()
    assert [m.id for m in models.data] == [mesh.model] and models.data[0].object == "model"

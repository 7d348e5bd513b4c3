"""The official openai client against the gateway, on the real engine."""

import openai
import pytest


@pytest.fixture(scope="module")
def client(mesh):
    return openai.OpenAI(base_url=f"{mesh.http}/v1", api_key="unused", max_retries=0)


def test_chat_completion(client, mesh):
    reply = client.chat.completions.create(
        model=mesh.model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 10
    assert 0 < reply.usage.completion_tokens <= 24


def test_chat_completion_streamed_with_usage(client, mesh):
    stream = client.chat.completions.create(
        model=mesh.model,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_completion_and_stop_string(client, mesh):
    reply = client.completions.create(model=mesh.model, prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=["7"])
    text = reply.choices[0].text
    assert "5" in text and "7" not in text
    assert reply.choices[0].finish_reason == "stop"


def test_completion_streamed_from_token_ids(client, mesh):
    stream = client.completions.create(model=mesh.model, prompt=[504, 3575, 282], max_tokens=8, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices).strip()


def test_same_seed_same_text(client, mesh):
    def once():
        return client.chat.completions.create(
            model=mesh.model, messages=[{"role": "user", "content": "Tell me a word."}], max_tokens=12,
            temperature=1.0, seed=1234,
        ).choices[0].message.content  # fmt: skip

    assert once() == once()


def test_models_lists_the_served_model(client, mesh):
    models = client.models.list()
    assert [m.id for m in models.data] == [mesh.model]

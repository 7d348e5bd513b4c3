"""The prompt builder both fronts use: which chat roles pass and how they reach the template, and
the InvalidArgument (naming the field) for what does not pass."""

import pytest
from transformers import AutoTokenizer

from kvmesh import models
from kvmesh.errors import InvalidArgument
from services.gateway import prompt
from services.gateway.tokenization import ModelTokenizer


class FakeTokenizer:
    """Records what the chat template would be given."""

    vocab_size = 100

    def __init__(self):
        self.rendered: list[dict[str, str]] = []

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        self.rendered = messages
        return [1, 2, 3]


@pytest.mark.parametrize("role", prompt.CHAT_ROLES)
def test_every_chat_role_passes(role):
    tokenizer = FakeTokenizer()
    assert prompt.chat_ids(tokenizer, [(role, "hi")]) == [1, 2, 3]


def test_the_template_sees_developer_as_system_and_the_rest_unchanged():
    tokenizer = FakeTokenizer()
    prompt.chat_ids(tokenizer, [("developer", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "")])
    assert tokenizer.rendered == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": ""},
    ]


@pytest.mark.parametrize(
    "messages, param, says",
    [
        ([], "messages", "at least one message"),
        ([("user", "hi"), ("robot", "beep")], "messages.1.role", "'robot' is not one of system, developer, user"),
        ([("", "hi")], "messages.0.role", "'' is not one of"),
        ([("User", "hi")], "messages.0.role", "'User' is not one of"),
    ],
)
def test_refused_messages_name_the_field(messages, param, says):
    with pytest.raises(InvalidArgument, match=says) as refused:
        prompt.chat_ids(FakeTokenizer(), messages)
    assert refused.value.param == param
    assert refused.value.message.startswith(f"{param}: ")


@pytest.mark.parametrize("ids", [[0, 5, 99], []])
def test_token_ids_within_the_vocabulary_pass(ids):
    assert prompt.token_ids(FakeTokenizer(), iter(ids), "prompt") == ids


@pytest.mark.parametrize("bad", [100, -1, 10**9])
def test_token_ids_outside_the_vocabulary_are_refused(bad):
    with pytest.raises(InvalidArgument, match=r"token_ids: token ids must be in \[0, 100\)") as refused:
        prompt.token_ids(FakeTokenizer(), [1, bad], "token_ids")
    assert refused.value.param == "token_ids"


def test_with_the_model_template_a_developer_message_is_a_system_message():
    hf = AutoTokenizer.from_pretrained(str(models.resolve(models.DEFAULT_MODEL)), local_files_only=True)
    tokenizer = ModelTokenizer("m", hf)
    as_developer = prompt.chat_ids(tokenizer, [("developer", "Answer briefly."), ("user", "Why is the sky blue?")])
    assert as_developer == tokenizer.encode_chat(
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Why is the sky blue?"}]
    )

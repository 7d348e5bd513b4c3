"""A request's prompt as token ids, built the same way for the gRPC and the OpenAI front: chat
messages are checked and rendered by the model's chat template, token ids checked against its
vocabulary. A bad prompt is an InvalidArgument naming the field."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kvmesh.errors import InvalidArgument
from services.gateway.tokenization import ModelTokenizer

# The roles chat templates render, and OpenAI's "developer" (its newer name for "system").
CHAT_ROLES = ("system", "developer", "user", "assistant")
_TEMPLATE_ROLE = {"developer": "system"}


def chat_ids(tokenizer: ModelTokenizer, messages: Sequence[tuple[str, str]]) -> list[int]:
    """`messages` as (role, content) pairs, in order."""
    if not messages:
        raise InvalidArgument("messages: at least one message is required", param="messages")
    rendered = []
    for i, (role, content) in enumerate(messages):
        if role not in CHAT_ROLES:
            param = f"messages.{i}.role"
            raise InvalidArgument(f"{param}: {role!r} is not one of {', '.join(CHAT_ROLES)}", param=param)
        rendered.append({"role": _TEMPLATE_ROLE.get(role, role), "content": content})
    return tokenizer.encode_chat(rendered)


def token_ids(tokenizer: ModelTokenizer, ids: Iterable[int], param: str) -> list[int]:
    """A prompt given as token ids, `param` the field that holds them."""
    out = list(ids)
    if any(t < 0 or t >= tokenizer.vocab_size for t in out):
        raise InvalidArgument(f"{param}: token ids must be in [0, {tokenizer.vocab_size})", param=param)
    return out

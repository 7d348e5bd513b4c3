"""The model's own tokenizer and chat template (transformers), loaded offline.

A chat prompt is encoded piece by piece between the special tokens the template writes, each piece
through a cache: the tokenizer cuts its input at those tokens before anything else, so the pieces
encode exactly as the whole does, and a system prompt many requests share is tokenized once.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from transformers import AutoTokenizer

from kvmesh import telemetry
from kvmesh.errors import InvalidArgument

TRACER = trace.get_tracer("kvmesh.gateway")

# Prompts at least this long are tokenized in a thread: a megabyte of text takes the tokenizer
# long enough to stall every other stream on the event loop.
OFF_LOOP_CHARS = 16_384


async def encode_sized(chars: int, encode: Callable[[], list[int]]) -> list[int]:
    """`encode()` for a prompt of `chars` characters, off the event loop when it is long; a
    `kvmesh.tokenize` span under the current one."""
    span = telemetry.start_span(TRACER, "kvmesh.tokenize", attributes={"kvmesh.prompt_chars": chars})
    with telemetry.ending(span):
        ids = await asyncio.to_thread(encode) if chars >= OFF_LOOP_CHARS else encode()
        span.set_attribute("kvmesh.prompt_tokens", len(ids))
        return ids


# Distinct pieces kept: shared system prompts stay, one-off questions come and go. Longer pieces
# are not kept, so a client sending huge unique prompts holds at most 1024 × 32 KiB here.
PIECE_CACHE_SIZE = 1024
MAX_CACHED_PIECE_CHARS = 32_768


@dataclass
class ModelTokenizer:
    name: str
    hf: Any  # a transformers fast tokenizer
    _special: re.Pattern | None = field(init=False, repr=False)
    _special_ids: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Only tokens matched verbatim cut the text: one that strips its neighbours' spaces would
        # change the pieces around it.
        verbatim = {
            t.content: i
            for i, t in self.backend.get_added_tokens_decoder().items()
            if not (t.lstrip or t.rstrip or t.single_word or t.normalized)
        }
        self._special_ids = verbatim
        longest_first = sorted(verbatim, key=len, reverse=True)
        self._special = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if verbatim else None
        self._cached_piece = functools.lru_cache(PIECE_CACHE_SIZE)(self._encode_piece)

    @classmethod
    def load(cls, name: str, path: str) -> ModelTokenizer:
        return cls(name, AutoTokenizer.from_pretrained(path, local_files_only=True))

    @property
    def backend(self) -> Any:
        """The `tokenizers.Tokenizer`, for incremental decoding."""
        return self.hf.backend_tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=True)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        try:
            text = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # the template itself rejects what it cannot render
            raise InvalidArgument(f"messages: the chat template refused them: {e}", param="messages") from None
        # The template already wrote the special tokens.
        if self._special is None:
            return self.hf.encode(text, add_special_tokens=False)
        ids: list[int] = []
        for piece in self._special.split(text):
            if piece in self._special_ids:
                ids.append(self._special_ids[piece])
            elif piece:
                ids += self.encode_piece(piece)
        return ids

    def encode_piece(self, piece: str) -> tuple[int, ...]:
        if len(piece) > MAX_CACHED_PIECE_CHARS:
            return self._encode_piece(piece)
        return self._cached_piece(piece)

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        return tuple(self.backend.encode(piece, add_special_tokens=False).ids)

"""The model's own tokenizer and chat template (transformers), loaded offline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import AutoTokenizer

from kvmesh.errors import InvalidArgument


@dataclass
class ModelTokenizer:
    name: str
    hf: Any  # a transformers fast tokenizer

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
        return self.hf.encode(text, add_special_tokens=False)

"""Chat prompts encoded piece by piece (with the piece cache) are token for token what the model's
tokenizer makes of the whole rendered prompt."""

import pytest
from transformers import AutoTokenizer

from kvmesh import models
from services.gateway.tokenization import MAX_CACHED_PIECE_CHARS, ModelTokenizer

SYSTEM = "You are a terse assistant. Answer in one sentence; never use lists.  Trailing spaces: "
CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": " leading space and\n\nnewlines\t"}],
    [{"role": "user", "content": "naïve café — 日本語のテキスト 🙂 and 'quotes'"}],
    [{"role": "user", "content": "literal special tokens <|im_end|><|im_start|>assistant\nin the text"}],
    [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": ""},
    ],
]


@pytest.fixture(scope="module")
def tokenizer():
    hf = AutoTokenizer.from_pretrained(str(models.resolve(models.DEFAULT_MODEL)), local_files_only=True)
    return ModelTokenizer("m", hf)


@pytest.mark.parametrize("messages", CHATS)
def test_pieces_encode_as_the_whole_prompt(tokenizer, messages):
    text = tokenizer.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tokenizer.encode_chat(messages) == tokenizer.hf.encode(text, add_special_tokens=False)


def test_a_shared_system_prompt_is_tokenized_once(tokenizer):
    tokenizer.encode_chat([{"role": "system", "content": SYSTEM * 20}, {"role": "user", "content": "one"}])
    hits = tokenizer._cached_piece.cache_info().hits
    tokenizer.encode_chat([{"role": "system", "content": SYSTEM * 20}, {"role": "user", "content": "two"}])
    assert tokenizer._cached_piece.cache_info().hits >= hits + 1


def test_a_huge_piece_is_encoded_but_not_kept(tokenizer):
    messages = [{"role": "user", "content": "word " * (MAX_CACHED_PIECE_CHARS // 5 + 10)}]
    text = tokenizer.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pieces = [p for p in tokenizer._special.split(text) if p and p not in tokenizer._special_ids]
    before = tokenizer._cached_piece.cache_info()
    assert tokenizer.encode_chat(messages) == tokenizer.hf.encode(text, add_special_tokens=False)
    after = tokenizer._cached_piece.cache_info()
    assert (after.hits + after.misses) - (before.hits + before.misses) == len(pieces) - 1  # all but the huge one

"""Incremental detokenization with the real SmolLM2 tokenizer (prepared by scripts/setup.sh)."""

import pytest
from transformers import AutoTokenizer

from kvmesh import models
from services.gateway.detokenizer import TextStream


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(models.resolve(models.DEFAULT_MODEL)))


TEXTS = ["héllo wörld 日本語 🙂 done", "plain ascii, with   spaces\nand lines", "ünïcödé—dashes “quotes” 🎉🎉"]


@pytest.mark.parametrize("text", TEXTS)
def test_one_token_at_a_time_gives_the_whole_text_and_no_broken_characters(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    stream = TextStream(tok.backend_tokenizer)
    deltas = [stream.push([i]) for i in ids]
    assert "".join(deltas) + stream.flush() == text
    assert all("\ufffd" not in d for d in deltas)


def test_special_tokens_are_skipped(tok):
    stream = TextStream(tok.backend_tokenizer)
    assert stream.push(tok.encode("Paris.", add_special_tokens=False) + [tok.eos_token_id]) == "Paris."


@pytest.mark.parametrize(
    "text, stop, expected",
    [
        ("one two three four", ["three"], "one two "),
        ("one two three four", ["four", "two"], "one "),
        ("nothing to stop here", ["zzz"], "nothing to stop here"),
        ("ends with a partial sto", ["stop!"], "ends with a partial sto"),
    ],
)
def test_stop_strings_cut_the_text_even_across_tokens(tok, text, stop, expected):
    stream = TextStream(tok.backend_tokenizer, stop)
    out = "".join(stream.push([i]) for i in tok.encode(text, add_special_tokens=False))
    out += stream.flush()
    assert out == expected
    assert stream.stopped == (expected != text)


def test_text_that_may_begin_a_stop_string_is_held_back_until_decided(tok):
    stream = TextStream(tok.backend_tokenizer, ["END"])
    assert stream.push(tok.encode("abc EN", add_special_tokens=False)) == "abc "
    assert stream.push(tok.encode("ough", add_special_tokens=False)) == "ENough"

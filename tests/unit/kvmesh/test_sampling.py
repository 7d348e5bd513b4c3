"""Sampling parameters: the one table of accepted and refused values (kvmesh/sampling.py), which
the gateway and the engines both apply, and the gateway's SamplingParams for a request."""

import dataclasses

import msgspec
import pytest

from kvmesh import sampling
from kvmesh.errors import InvalidArgument
from kvmesh.sampling import SamplingParams
from services.gateway.sampling import Sampling, engine_sampling


@pytest.mark.parametrize(
    "name, value",
    [
        ("max_tokens", 1),
        ("max_tokens", 90),  # all the room beside a 10-token prompt in 100
        ("temperature", 0.0),
        ("temperature", 2.0),
        ("top_p", 1.0),
        ("top_p", 0.01),
        ("top_k", -1),
        ("top_k", 0),
        ("top_k", 40),
        ("presence_penalty", -2.0),
        ("frequency_penalty", 2.0),
        ("stop", ["a"] * 16),
        ("seed", -5),
    ],
)
def test_accepted(name, value):
    sampling.check({name: value}, prompt_tokens=10, max_model_len=100)


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("max_tokens", 0, "max_tokens must be at least 1, got 0"),
        ("max_tokens", -3, "at least 1"),
        ("max_tokens", 91, "at most 90 tokens fit"),
        ("temperature", 2.5, "temperature must be in [0.0, 2.0], got 2.5"),
        ("temperature", -0.1, "[0.0, 2.0]"),
        ("top_p", 0.0, "top_p must be in (0.0, 1.0], got 0.0"),
        ("top_p", 1.5, "(0.0, 1.0]"),
        ("top_k", -2, "top_k must be -1 or 0 (off) or positive"),
        ("presence_penalty", 3, "[-2.0, 2.0]"),
        ("temperature", float("nan"), "temperature must be in [0.0, 2.0], got nan"),
        ("frequency_penalty", -2.5, "[-2.0, 2.0]"),
        ("stop", ["a"] * 17, "at most 16"),
    ],
)
def test_refused_naming_the_field(name, value, words):
    with pytest.raises(InvalidArgument) as e:
        sampling.check({name: value}, prompt_tokens=10, max_model_len=100)
    assert e.value.param == name and words in e.value.message


def test_unset_is_never_refused_and_the_first_bad_field_is_named():
    sampling.check({"max_tokens": None, "top_k": None, "stop": []}, prompt_tokens=10, max_model_len=100)
    with pytest.raises(InvalidArgument) as e:
        sampling.check({"top_k": -5, "temperature": 9}, prompt_tokens=10, max_model_len=100)
    assert e.value.param == "temperature"


def check(s: Sampling, prompt: int = 10, limit: int = 100, default: int = 50, defaults=None) -> SamplingParams:
    return engine_sampling(s, prompt, limit, default, defaults)


def test_defaults_fill_only_what_is_unset():
    out = check(Sampling(temperature=0.0), defaults={"temperature": 0.2, "top_p": 0.9})
    assert out == SamplingParams(max_tokens=50, temperature=0.0, top_p=0.9)


def test_default_max_tokens_is_bounded_by_the_room_left():
    assert check(Sampling(), prompt=90).max_tokens == 10


def test_everything_is_passed_through_and_only_what_differs_from_the_defaults_is_sent():
    s = Sampling(max_tokens=5, top_p=0.5, top_k=3, seed=7, stop=["x"], stop_token_ids=[2], ignore_eos=True)
    assert msgspec.json.decode(msgspec.json.encode(check(s))) == {
        "max_tokens": 5,
        "top_p": 0.5,
        "top_k": 3,
        "seed": 7,
        "stop": ["x"],
        "stop_token_ids": [2],
        "ignore_eos": True,
    }
    assert check(Sampling(top_k=-1)).top_k == 0  # off


@pytest.mark.parametrize(
    "sampling_, prompt, param, words",
    [
        (Sampling(max_tokens=0), 10, "max_tokens", "at least 1"),
        (Sampling(max_tokens=91), 10, "max_tokens", "at most 90"),
        (Sampling(), 100, "messages", "context length is 100"),
        (Sampling(), 0, "prompt", "empty"),
        (Sampling(top_p=0.0), 10, "top_p", "(0.0, 1.0]"),
        (Sampling(top_k=-2), 10, "top_k", "top_k"),
        (Sampling(stop=["a"] * 17), 10, "stop", "at most 16"),
    ],
)
def test_the_gateway_refuses_naming_the_field(sampling_, prompt, param, words):
    with pytest.raises(InvalidArgument) as e:
        check(sampling_, prompt=prompt)
    assert e.value.param == param
    assert words in e.value.message


def test_a_request_can_ask_for_every_engine_sampling_field_and_no_other():
    assert [f.name for f in dataclasses.fields(Sampling)] == list(SamplingParams.__struct_fields__)

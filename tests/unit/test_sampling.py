import pytest

from kvmesh.errors import InvalidArgument
from services.gateway.sampling import Sampling, engine_sampling


def check(s: Sampling, prompt: int = 10, limit: int = 100, default: int = 50, defaults=None) -> dict:
    return engine_sampling(s, prompt, limit, default, defaults)


def test_defaults_fill_only_what_is_unset():
    out = check(Sampling(temperature=0.0), defaults={"temperature": 0.2, "top_p": 0.9})
    assert out == {"max_tokens": 50, "temperature": 0.0, "top_p": 0.9}


def test_default_max_tokens_is_bounded_by_the_room_left():
    assert check(Sampling(), prompt=90)["max_tokens"] == 10


def test_everything_is_passed_through():
    s = Sampling(max_tokens=5, top_p=0.5, top_k=3, seed=7, stop=["x"], stop_token_ids=[2], ignore_eos=True)
    assert check(s) == {
        "max_tokens": 5,
        "top_p": 0.5,
        "top_k": 3,
        "seed": 7,
        "stop": ["x"],
        "stop_token_ids": [2],
        "ignore_eos": True,
    }


@pytest.mark.parametrize(
    "sampling, prompt, param, words",
    [
        (Sampling(max_tokens=0), 10, "max_tokens", "at least 1"),
        (Sampling(max_tokens=-3), 10, "max_tokens", "at least 1"),
        (Sampling(max_tokens=91), 10, "max_tokens", "at most 90"),
        (Sampling(), 100, "messages", "context length is 100"),
        (Sampling(), 0, "prompt", "empty"),
        (Sampling(temperature=2.5), 10, "temperature", "[0.0, 2.0]"),
        (Sampling(temperature=-0.1), 10, "temperature", "[0.0, 2.0]"),
        (Sampling(top_p=0.0), 10, "top_p", "(0.0, 1.0]"),
        (Sampling(top_p=1.5), 10, "top_p", "(0.0, 1.0]"),
        (Sampling(top_k=-2), 10, "top_k", "top_k"),
        (Sampling(presence_penalty=3), 10, "presence_penalty", "[-2.0, 2.0]"),
        (Sampling(stop=["a"] * 17), 10, "stop", "at most 16"),
    ],
)
def test_bad_values_name_the_field(sampling, prompt, param, words):
    with pytest.raises(InvalidArgument) as e:
        check(sampling, prompt=prompt)
    assert e.value.param == param
    assert words in e.value.message

import json
import re

import msgspec
import numpy as np
import pytest

from engines.request import BadRequest, parse
from services.gateway.sampling import Sampling, engine_sampling


def p(ids=(1, 2, 3), sampling=None, params=None, max_model_len=100, vocab=50):
    raw = json.dumps(sampling) if isinstance(sampling, dict) else sampling
    arr = None if ids is None else np.asarray(ids, dtype=np.int32)
    return parse("rid", arr, raw, params or {}, max_model_len=max_model_len, vocab_size=vocab)


def test_good_request_with_trace_context():
    r = p(sampling={"max_tokens": 4, "temperature": 0.0, "stop": ["x"]}, params={"traceparent": "00-a-b-01", "x": 1})
    assert r.prompt_token_ids == [1, 2, 3]
    assert (r.sampling.max_tokens, r.sampling.temperature, r.sampling.stop) == (4, 0.0, ["x"])
    assert r.trace_headers == {"traceparent": "00-a-b-01"}


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"ids": None}, "input_ids: required"),
        ({"ids": []}, "input_ids: required"),
        ({"ids": [1, 99]}, "[0, 50)"),
        ({"ids": [-1]}, "[0, 50)"),
        ({"sampling": "{not json"}, "sampling_params: not JSON"),
        ({"sampling": {"max_tokens": 0}}, "sampling_params: max_tokens must be at least 1"),
        ({"sampling": {"max_tokens": "4"}}, "sampling_params: Expected `int`, got `str` - at `$.max_tokens`"),
        ({"sampling": {"temprature": 1}}, "sampling_params: Object contains unknown field `temprature`"),
        ({"sampling": {"max_tokens": 98}}, "exceed this model's context length 100"),
        ({"sampling": {"top_k": -2}}, "sampling_params: top_k must be -1 or 0 (off) or positive"),
        ({"sampling": {"stop": ["x"] * 17}}, "sampling_params: stop: at most 16 strings"),
    ],
)
def test_bad_requests_say_which_input(kwargs, words):
    with pytest.raises(BadRequest, match=re.escape(words)):
        p(**kwargs)


def test_sampling_params_the_gateway_sends_are_read_as_sent():
    sent = engine_sampling(Sampling(max_tokens=5, temperature=0.0, top_k=-1, stop=["x"]), 3, 100, 16)
    r = p(sampling=msgspec.json.encode(sent).decode())
    assert r.sampling == sent and r.sampling.top_k == 0  # -1 (off) is 0 on both sides
    assert p(sampling={"top_k": -1}).sampling.top_k == 0


def kv(role, raw):
    arr = np.asarray([1, 2], dtype=np.int32)
    return parse("rid", arr, None, {}, max_model_len=100, vocab_size=50, kv_transfer_json=raw, role=role)


def test_decode_instances_take_kv_transfer_params():
    assert kv("decode", '{"remote_host": "127.0.0.1"}').kv_transfer_params == {"remote_host": "127.0.0.1"}
    assert kv("decode", "{}").kv_transfer_params == {}  # prefill locally
    assert kv("aggregated", None).kv_transfer_params is None


@pytest.mark.parametrize(
    "role, raw, words",
    [
        ("decode", None, "required on a decode instance"),
        ("decode", "[1]", "must be a JSON object"),
        ("decode", "{nope", "not JSON"),
        ("aggregated", "{}", "only decode instances take it"),
        ("prefill", "{}", "only decode instances take it"),
    ],
)
def test_kv_transfer_params_in_the_wrong_place_or_shape(role, raw, words):
    with pytest.raises(BadRequest, match=words):
        kv(role, raw)


@pytest.mark.parametrize(
    "params, words",
    [
        ({"do_remote_prefill": True}, "missing remote_engine_id, remote_request_id"),
        ({"do_remote_prefill": False, "remote_engine_id": "e", "remote_request_id": "r", "remote_host": "h",
          "remote_port": 1, "remote_block_ids": [1]}, "do_remote_prefill is not true"),
        ({"do_remote_prefill": True, "remote_engine_id": "e", "remote_request_id": "r", "remote_host": "h",
          "remote_port": "1", "remote_block_ids": [1]}, "remote_port must be an integer"),
    ],
)  # fmt: skip
def test_vllm_decode_refuses_params_not_from_a_vllm_prefill(params, words):
    from engines.vllm_engine import check_kv_transfer

    with pytest.raises(BadRequest, match=words):
        check_kv_transfer(params)


def test_response_interval_is_read_from_the_parameters_and_checked():
    assert p(params={"response_interval_ms": 250}).response_interval_s == 0.25
    assert p().response_interval_s == 0
    for bad in ("soon", -1, True, 60001):
        with pytest.raises(BadRequest, match="response_interval_ms"):
            p(params={"response_interval_ms": bad})

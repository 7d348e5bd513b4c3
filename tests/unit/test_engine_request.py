import json

import numpy as np
import pytest

from engines.request import BadRequest, parse


def p(ids=(1, 2, 3), sampling=None, params=None, max_model_len=100, vocab=50):
    raw = json.dumps(sampling) if isinstance(sampling, dict) else sampling
    arr = None if ids is None else np.asarray(ids, dtype=np.int32)
    return parse("rid", arr, raw, params, max_model_len=max_model_len, vocab_size=vocab)


def test_good_request_with_trace_context():
    r = p(sampling={"max_tokens": 4, "temperature": 0.0, "stop": ["x"]}, params='{"traceparent": "00-a-b-01", "x": 1}')
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
        ({"sampling": "{not json"}, "not JSON"),
        ({"sampling": {"max_tokens": 0}}, "sampling_params.max_tokens"),
        ({"sampling": {"temprature": 1}}, "sampling_params.temprature"),
        ({"sampling": {"max_tokens": 98}}, "exceeds the context length 100"),
    ],
)
def test_bad_requests_say_which_input(kwargs, words):
    with pytest.raises(BadRequest, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        p(**kwargs)

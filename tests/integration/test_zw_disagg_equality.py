"""Greedy output of a disaggregated request (test_aa_disagg.py, KV moved by NIXL) equals the same
prompt's on an aggregated vLLM worker, token for token."""

import grpc
import pytest

from kvmesh.v1 import inference_pb2_grpc
from tests.integration.test_aa_disagg import MAX_TOKENS, PROMPT_LENGTHS, generate, prompt


@pytest.mark.parametrize("name", list(PROMPT_LENGTHS))
def test_disaggregated_equals_aggregated(disagg_outputs, mesh, name):
    if name not in disagg_outputs:
        pytest.skip(f"{name} did not run disaggregated in this session")
    with grpc.insecure_channel(mesh.grpc) as channel:
        responses = generate(inference_pb2_grpc.InferenceStub(channel), mesh.model, prompt(name))
    tokens = [t for r in responses for t in r.token_ids]
    assert len(tokens) == MAX_TOKENS
    assert disagg_outputs[name] == tokens

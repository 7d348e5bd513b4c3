import json

from services.worker import model_config
from tests import ROOT

REPO = ROOT / "triton_models"


def test_shipped_vllm_model_is_decoupled_python_with_token_io():
    config = model_config.read(REPO / "vllm")
    assert config.name == "vllm" and config.backend == "python"
    assert config.model_transaction_policy.decoupled
    assert [i.name for i in config.input] == ["input_ids", "sampling_params", "mux_requests"]
    outputs = ["output_ids", "finish_reason", "prompt_tokens", "cached_tokens", "mux_deltas"]
    assert [o.name for o in config.output] == outputs


def test_engine_args_override_merges_over_the_file():
    config = model_config.read(REPO / "vllm")
    loaded = json.loads(model_config.with_engine_args(config, {"max_model_len": 1024}))
    args = json.loads(loaded["parameters"]["engine_args"]["string_value"])
    assert args == {**model_config.engine_args(config), "max_model_len": 1024}
    assert loaded["model_transaction_policy"]["decoupled"] is True


def test_role_and_block_size_come_from_the_repository_unless_overridden():
    from kvmesh.v1 import worker_pb2

    prefill, sim = model_config.read(REPO / "vllm_prefill"), model_config.read(REPO / "sim")
    assert model_config.role(prefill) == worker_pb2.ROLE_PREFILL
    assert model_config.role(sim) == worker_pb2.ROLE_AGGREGATED
    assert model_config.block_size(sim, model_config.engine_args(sim)) == 64
    assert model_config.block_size(sim, {"block_size": 16}) == 16
    trtllm = model_config.read(REPO / "trtllm")
    assert model_config.block_size(trtllm, model_config.engine_args(trtllm)) == 32

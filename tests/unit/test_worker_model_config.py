import json
from pathlib import Path

from services.worker import model_config

REPO = Path(__file__).resolve().parents[2] / "triton_models"


def test_shipped_vllm_model_is_decoupled_python_with_token_io():
    config = model_config.read(REPO / "vllm")
    assert config.name == "vllm" and config.backend == "python"
    assert config.model_transaction_policy.decoupled
    assert [i.name for i in config.input] == ["input_ids", "sampling_params"]
    assert [o.name for o in config.output] == ["output_ids", "finish_reason", "prompt_tokens", "cached_tokens"]


def test_engine_args_override_merges_over_the_file():
    config = model_config.read(REPO / "vllm")
    loaded = json.loads(model_config.with_engine_args(config, {"max_model_len": 1024}))
    args = json.loads(loaded["parameters"]["engine_args"]["string_value"])
    assert args == {**model_config.engine_args(config), "max_model_len": 1024}
    assert loaded["model_transaction_policy"]["decoupled"] is True

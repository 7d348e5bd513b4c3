"""Read a Triton model's config.pbtxt with Triton's own schema and override its engine args."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from kvmesh.repo import interface
from kvmesh.v1 import worker_pb2


def read(model_dir: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), config)
    if not config.name:
        config.name = model_dir.name
    return config


def engine_args(config: model_config_pb2.ModelConfig) -> dict[str, Any]:
    raw = config.parameters["engine_args"].string_value if "engine_args" in config.parameters else "{}"
    return json.loads(raw)


def parameter(config: model_config_pb2.ModelConfig, key: str, default: str) -> str:
    return config.parameters[key].string_value if key in config.parameters else default


def block_size(config: model_config_pb2.ModelConfig, engine_args: dict[str, Any]) -> int:
    """The engine's KV block size: an engine-argument override, else what the repository says."""
    return int(interface.engine_block_size(engine_args) or parameter(config, "kv_block_size", "128"))


def role(config: model_config_pb2.ModelConfig) -> worker_pb2.Role.ValueType:
    """The role `kvmesh repo build` wrote into the model's parameters (aggregated if none)."""
    name = parameter(config, "role", "aggregated")
    try:
        return worker_pb2.Role.Value(f"ROLE_{name.upper()}")
    except ValueError:
        raise ValueError(f"{config.name}: parameters.role {name!r} is not aggregated, prefill or decode") from None


def with_engine_args(config: model_config_pb2.ModelConfig, overrides: dict[str, Any]) -> str:
    """The JSON config Triton's load API takes, with engine_args merged over the file's."""
    merged = model_config_pb2.ModelConfig()
    merged.CopyFrom(config)
    merged.parameters["engine_args"].string_value = json.dumps({**engine_args(config), **overrides})
    return json_format.MessageToJson(merged, preserving_proto_field_name=True)

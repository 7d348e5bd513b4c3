"""The model-repository spec: what `kvmesh repo build` reads (TOML or YAML).

One entry per Triton model: which engine, which role, how many instances, the engine's own
arguments and the KV settings. The engine-specific arguments that a role implies (vLLM's
kv_transfer_config, TensorRT-LLM's cache transceiver and request type) are derived here, so a
spec cannot say "prefill" and configure a consumer.
"""

from __future__ import annotations

import json
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Engine(StrEnum):
    VLLM = "vllm"
    TENSORRTLLM = "tensorrtllm"
    SIM = "sim"


class Role(StrEnum):
    AGGREGATED = "aggregated"
    PREFILL = "prefill"
    DECODE = "decode"


# The KV block size each engine keys its cache by on these machines' defaults.
DEFAULT_BLOCK_SIZE = {Engine.VLLM: 128, Engine.TENSORRTLLM: 32, Engine.SIM: 64}


class KvTransfer(BaseModel):
    """How KV moves from a prefill instance to a decode instance."""

    model_config = ConfigDict(extra="forbid")
    # vLLM: a KV connector class; TensorRT-LLM: a cache-transceiver backend.
    connector: str = "NixlConnector"
    buffer_device: str = Field("cpu", description="vLLM kv_buffer_device: cpu here, cuda on a GPU")
    # A decode request whose KV has not arrived by then fails (TensorRT-LLM: is cancelled).
    timeout_ms: int = Field(30_000, gt=0)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    engine: Engine
    role: Role = Role.AGGREGATED
    model: str = Field("smollm2-135m-instruct", description="a kvmesh catalog name or a folder")
    instances: int = Field(1, ge=1)
    kv_block_size: int | None = Field(None, ge=1, description="default: the engine's")
    engine_args: dict[str, Any] = Field(default_factory=dict)
    kv_transfer: KvTransfer | None = None
    description: str = ""

    @model_validator(mode="after")
    def _roles_and_transfer_agree(self) -> ModelSpec:
        disaggregated = self.role != Role.AGGREGATED
        if disaggregated and self.kv_transfer is None:
            connector = {Engine.VLLM: "NixlConnector", Engine.SIM: "sim"}.get(self.engine, "DEFAULT")
            self.kv_transfer = KvTransfer(connector=connector, buffer_device="cpu")
        if not disaggregated and self.kv_transfer is not None:
            raise ValueError(f"{self.name}: kv_transfer is for prefill and decode roles only")
        for derived in ("kv_transfer_config", "cache_transceiver_config", "block_size", "tokens_per_block"):
            if derived in self.engine_args:
                raise ValueError(f"{self.name}: engine_args.{derived} is derived from role/kv_block_size; set those")
        return self

    @property
    def block_size(self) -> int:
        return self.kv_block_size or DEFAULT_BLOCK_SIZE[self.engine]

    def full_engine_args(self) -> dict[str, Any]:
        """The engine's arguments as the model receives them (config.pbtxt `engine_args`)."""
        args: dict[str, Any] = {"model": self.model, **self.engine_args}
        if self.engine == Engine.TENSORRTLLM:
            kv_cache = dict(args.pop("kv_cache_config", {}))
            kv_cache["tokens_per_block"] = self.block_size
            args["kv_cache_config"] = {"enable_block_reuse": True, "event_buffer_max_size": 1024, **kv_cache}
        else:
            args["block_size"] = self.block_size
        if self.kv_transfer is None or self.engine == Engine.SIM:  # the simulator's transfer needs no settings
            return args
        if self.engine == Engine.VLLM:
            # kvmesh's own key (the vLLM adapter takes it out): vLLM retries a failed NIXL
            # handshake forever, so a decode request whose KV never comes fails after this.
            args["kv_transfer_timeout_s"] = self.kv_transfer.timeout_ms / 1000
            args["kv_transfer_config"] = {
                "kv_connector": self.kv_transfer.connector,
                "kv_role": "kv_producer" if self.role == Role.PREFILL else "kv_consumer",
                "kv_buffer_device": self.kv_transfer.buffer_device,
            }
        else:
            args["cache_transceiver_config"] = {
                "backend": self.kv_transfer.connector,
                "kv_transfer_timeout_ms": self.kv_transfer.timeout_ms,
            }
            if self.role == Role.PREFILL:  # TensorRT-LLM: no overlap scheduler on context servers
                args["disable_overlap_scheduler"] = True
        return args


class RepositorySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[ModelSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> RepositorySpec:
        names = [m.name for m in self.models]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"model names must be unique: {', '.join(duplicates)}")
        return self


class SpecError(ValueError):
    """The spec file is unreadable or invalid; the message names the file and the field."""


def load(path: Path) -> RepositorySpec:
    try:
        text = path.read_text()
        raw = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
        return RepositorySpec.model_validate(raw)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'TOML'}: {e}") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SpecError(f"{path}: {where}: {first['msg']}") from None


def engine_args_json(spec: ModelSpec) -> str:
    return json.dumps(spec.full_engine_args(), sort_keys=True)

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from kvmesh import models
from kvmesh.settings import CommonSettings

REPO_ROOT = Path(__file__).resolve().parents[2]


class WorkerSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="KVMESH_WORKER_", cli_prog_name="kvmesh worker")

    model: str = Field(models.DEFAULT_MODEL, description="catalog name or Hugging Face folder")
    served_model_name: str = Field("", description="name clients ask for; default: the model's")
    model_repository: Path = REPO_ROOT / "triton_models"
    triton_model: str = "vllm"
    grpc_port: int = Field(0, ge=0, le=65535, description="Triton gRPC port; 0 = a free port")
    http_port: int = Field(0, ge=0, le=65535)
    engine_args: str = Field("{}", description="JSON vLLM engine-argument overrides")
    cpus: str = Field("0-1", description="cores the engine's OpenMP threads are bound to")
    lease_ms: int = Field(5000, ge=500, description="registry lease; a dead worker vanishes after it")
    load_timeout_s: float = Field(600.0, gt=0)
    worker_id: str = Field("", description="default: w-<random>")

    @field_validator("engine_args")
    @classmethod
    def _json_object(cls, value: str) -> str:
        parsed = json.loads(value)
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object")
        return value

    def engine_overrides(self) -> dict[str, Any]:
        return {"model": self.model, **json.loads(self.engine_args)}

    @property
    def name_served(self) -> str:
        return self.served_model_name or Path(self.model).name

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from kvmesh import models
from kvmesh.net import is_loopback
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
    reserved_ports: list[int] = Field(
        default_factory=list, description="ports the rest of the mesh binds: never a free port's pick"
    )
    engine_args: str = Field("{}", description="JSON engine-argument overrides (vLLM's, or the simulator's)")
    cpus: str = Field("0-1", description="cores the engine's OpenMP threads are bound to")
    lease_ms: int = Field(5000, ge=500, description="registry lease; a dead worker vanishes after it")
    load_timeout_s: float = Field(600.0, gt=0)
    drain_settle_ms: int = Field(
        1000, ge=0, description="on a role change or a stop, how long requests routed before it may still arrive"
    )
    drain_timeout_s: float = Field(
        300.0, gt=0, description="on a role change, how long the old model's requests may take"
    )
    worker_id: str = Field("", description="default: w-<random>")
    kv_events: bool = Field(True, description="publish the engine's KV events (for kvindex)")
    kv_events_dir: Path = Field(
        Path(tempfile.gettempdir()), description="where the engine's KV-event ZMQ sockets live (ipc://, this host only)"
    )
    kv_events_port: int = Field(
        0, ge=0, le=65535,
        description="advertised address not loopback: the TCP port the worker republishes its KV events on "
        "(kvindex subscribes there from any host); 0 = a free port",
    )  # fmt: skip
    kv_events_replay_port: int = Field(
        0, ge=0, le=65535, description="advertised address not loopback: the KV-event replay's TCP port; 0: a free one"
    )
    nixl_port: int = Field(
        0, ge=0, le=65535, description="prefill/decode workers: NIXL's side channel (KV handshakes); 0 = a free port"
    )  # fmt: skip

    @field_validator("engine_args")
    @classmethod
    def _json_object(cls, value: str) -> str:
        parsed = json.loads(value)
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object")
        return value

    def engine_overrides(self, worker_id: str) -> dict[str, Any]:
        overrides: dict[str, Any] = {"model": self.model}
        if self.kv_events:
            endpoint, replay = self.kv_events_endpoints(worker_id)
            overrides["kv_events_config"] = {
                "enable_kv_cache_events": True,
                "publisher": "zmq",
                "endpoint": endpoint,
                "replay_endpoint": replay,
            }
        return overrides | json.loads(self.engine_args)

    def kv_events_endpoints(self, worker_id: str) -> tuple[str, str]:
        """The engine's (publisher, replay). ipc sockets: vLLM binds only wildcard TCP addresses,
        and a worker listens on its own address alone; other hosts get the events from the relay."""
        base = self.kv_events_dir / f"kvmesh-{worker_id}-kv"
        return f"ipc://{base}.sock", f"ipc://{base}-replay.sock"

    @property
    def relays_kv_events(self) -> bool:
        """Whether the KV events must reach other hosts: the engine's ipc sockets reach this one only."""
        return self.kv_events and not is_loopback(self.advertise_host)

    @property
    def name_served(self) -> str:
        return self.served_model_name or Path(self.model).name

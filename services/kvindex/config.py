from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from kvmesh.settings import WatcherSettings


class KvIndexSettings(WatcherSettings):
    model_config = SettingsConfigDict(env_prefix="KVMESH_KVINDEX_", cli_prog_name="kvmesh kvindex")

    port: int = Field(8091, ge=0, le=65535, description="gRPC port; 0 = a free port")
    max_match_blocks: int = Field(4096, ge=1, description="longest request Match accepts, in blocks")

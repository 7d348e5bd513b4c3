from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from kvmesh.routing.config import RoutingSettings
from kvmesh.settings import WatcherSettings


class RouterSettings(WatcherSettings, RoutingSettings):
    model_config = SettingsConfigDict(env_prefix="KVMESH_ROUTER_", cli_prog_name="kvmesh router")

    port: int = Field(8090, ge=0, le=65535, description="gRPC port; 0 = a free port")
    drain_timeout_s: float = Field(
        10.0, gt=0, description="on SIGTERM, how long the routes in flight may take; new sessions are refused"
    )

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from kvmesh.settings import WatcherSettings
from services.planner.forecast import SMOOTHED, ForecasterName

# The choices; each has one registration list keyed by these names (forecast.FORECASTERS,
# connectors.factory.CONNECTORS), and a unit test keeps the two in step.
ConnectorName = Literal["local", "triton", "kubernetes"]


class PlannerSettings(WatcherSettings):
    model_config = SettingsConfigDict(env_prefix="KVMESH_PLANNER_", cli_prog_name="kvmesh planner")

    port: int = Field(8092, ge=0, le=65535, description="gRPC port; 0 = a free port")
    profile: Path = Field(description="the engine's profile (`kvmesh profile` writes it)")
    gateway_metrics: list[str] = Field(description="the gateways' Prometheus URLs")
    interval_s: float = Field(10.0, gt=0, description="one observation and decision per interval")
    ttft_ms: float = Field(2000.0, gt=0)
    itl_ms: float = Field(100.0, gt=0)
    percentile: float = Field(90.0, gt=0, lt=100)
    max_replicas: int = Field(2, ge=2, description="workers over both pools")
    forecaster: ForecasterName = Field("moving-average", description="how the next interval's need follows the past's")
    forecast_window: int | None = Field(None, ge=1, description="moving-average, peak, bursts: intervals back")
    forecast_smooth: int | None = Field(
        None, ge=1, description="peak, bursts: intervals averaged before the peak (bursts: 2 unless given)"
    )
    cooldown_s: float = Field(60.0, ge=0)
    down_after: int = Field(3, ge=1, description="intervals of lower need before a pool shrinks")
    dry_run: bool = Field(False, description="decide and log, never act")
    connector: ConnectorName = Field(
        "local", description="local (worker processes here), triton (role changes of running workers) or kubernetes"
    )
    namespace: str = Field("kvmesh", description="kubernetes: the pools' namespace")
    # One shell-quoted string: a list flag would parse the JSON inside --engine-args as its own.
    worker_args: str = Field("", description="local: arguments every new worker gets, shell-quoted")
    engine: str = Field("sim", description="local, triton: workers run <engine>_prefill / <engine>_decode")
    assignment_ttl_s: float = Field(900.0, gt=0, description="triton: how long a worker may take to change role")
    log_dir: Path = Field(Path("."), description="local: where new workers log")

    @model_validator(mode="after")
    def _only_smoothing_forecasters_smooth(self) -> PlannerSettings:
        if self.forecast_smooth is not None and self.forecaster not in SMOOTHED:
            smoothing = ", ".join(SMOOTHED)
            raise ValueError(f"forecast_smooth: the {self.forecaster} forecaster does not smooth; {smoothing} do")
        return self

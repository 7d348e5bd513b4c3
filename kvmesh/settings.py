"""Settings: one pydantic-settings class per service; every field has an environment twin
(KVMESH_<SERVICE>_<FIELD>) and a command-line flag (--field-name), flags winning."""

from __future__ import annotations

import logging
import os
import sys
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://127.0.0.1:6390/0"

S = TypeVar("S", bound="CommonSettings")


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(cli_kebab_case=True, cli_implicit_flags=True, extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on")
    redis_url: str = Field(
        default_factory=lambda: os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        description="the registry's Redis (REDIS_URL works too)",
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port; 0 = a free port")
    log_level: str = "INFO"


class WatcherSettings(CommonSettings):
    """For the services that keep the live worker set (kvmesh.registry.Watcher)."""

    refresh_ms: int = Field(
        250, ge=10,
        description="shortest time between two reads of the worker registry (it is read when a worker "
        "announces a change and when a lease runs out)",
    )  # fmt: skip


def load(cls: type[S], argv: list[str] | None = None) -> S:
    """Parse flags and environment; bad config stops the service with a message naming the field."""
    try:
        settings = CliApp.run(cls, cli_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as e:
        problems = "; ".join(map(_problem, e.errors()))
        raise SystemExit(f"{cls.__name__}: invalid configuration: {problems}") from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return settings


def _problem(error) -> str:
    # A cross-field rule has no location: its message names the fields itself.
    return f"{'.'.join(map(str, error['loc']))}: {error['msg']}" if error["loc"] else error["msg"]

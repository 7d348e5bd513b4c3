"""Settings: one pydantic-settings class per service; every field has an environment twin
(KVMESH_<SERVICE>_<FIELD>) and a command-line flag (--field-name), flags winning."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from kvmesh import logs
from kvmesh.net import is_loopback

DEFAULT_REDIS_URL = "redis://127.0.0.1:6390/0"
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})

S = TypeVar("S", bound="CommonSettings")


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(cli_kebab_case=True, cli_implicit_flags=True, extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on")
    advertise_host: str = Field(
        "", description="the address the rest of the mesh dials to reach this one; default: --host, unless that "
        "is a wildcard",
    )  # fmt: skip
    redis_url: str = Field(
        default_factory=lambda: os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        description="the registry's Redis (REDIS_URL works too)",
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port; 0 = a free port")
    log_level: str = "INFO"
    log_json: bool = Field(
        default_factory=logs.json_from_env,
        description="log one JSON object a line, with the trace id of the request it is about (KVMESH_LOG_JSON=1 "
        "does it for every service, and every process `kvmesh up` starts)",
    )
    tls_cert: Path | None = Field(
        None, description="PEM certificate this process shows as server and as client (mutual TLS on every gRPC hop)"
    )
    tls_key: Path | None = Field(None, description="the private key of --tls-cert (PEM)")
    tls_ca: Path | None = Field(None, description="PEM CA every peer's certificate must be signed by")
    # True for a service whose client-facing ports serve TLS from --tls-cert/--tls-key alone (the
    # gateway's front); its mesh hops stay plain unless --tls-ca is given too.
    tls_ca_optional: ClassVar[bool] = False
    auth: Literal["auto", "on", "off"] = Field(
        "auto",
        description="API keys (Authorization: Bearer) on every call but health checks; auto: on unless --host is "
        "loopback. With auth on, the services show each other the token in KVMESH_MESH_TOKEN",
    )

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "on" or (self.auth == "auto" and not is_loopback(self.host))

    @property
    def local_host(self) -> str:
        """Where to bind what listens on one address only, and to dial this process itself:
        --host, or the advertised address when --host is a wildcard."""
        return self.advertise_host if self.host in WILDCARD_HOSTS else self.host

    @model_validator(mode="after")
    def _advertised_address(self) -> CommonSettings:
        if not self.advertise_host:
            if self.host in WILDCARD_HOSTS:
                raise ValueError(
                    f"advertise_host: --host {self.host!r} listens on every interface, so it is no address a "
                    "peer can dial: pass --advertise-host (e.g. this pod's or host's IP)"
                )
            self.advertise_host = self.host
        elif self.advertise_host in WILDCARD_HOSTS:
            raise ValueError(f"advertise_host: {self.advertise_host} is a wildcard, not an address a peer can dial")
        return self

    @model_validator(mode="after")
    def _tls_all_or_nothing(self) -> CommonSettings:
        given = {name: getattr(self, name) for name in ("tls_cert", "tls_key", "tls_ca")}
        needed = {n: v for n, v in given.items() if not (n == "tls_ca" and self.tls_ca_optional)}
        if any(given.values()) and not all(needed.values()):
            missing = ", ".join("--" + n.replace("_", "-") for n, v in needed.items() if not v)
            together = "--tls-cert and --tls-key" if self.tls_ca_optional else "--tls-cert, --tls-key and --tls-ca"
            raise ValueError(f"tls: TLS needs {together}; missing {missing}")
        for name, path in given.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a file")
        return self


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
    service = cls.model_config.get("env_prefix", "KVMESH_").removeprefix("KVMESH_").rstrip("_").lower()
    logs.configure(settings.log_level, f"kvmesh-{service or 'service'}", settings.log_json)
    return settings


def _problem(error) -> str:
    # A cross-field rule has no location: its message names the fields itself.
    return f"{'.'.join(map(str, error['loc']))}: {error['msg']}" if error["loc"] else error["msg"]

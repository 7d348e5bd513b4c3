from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from kvmesh import models
from kvmesh.settings import WatcherSettings
from services.gateway.limits import InputLimits
from services.gateway.slow_clients import DEFAULT_WRITE_TIMEOUT_S


class GatewaySettings(WatcherSettings):
    model_config = SettingsConfigDict(env_prefix="KVMESH_GATEWAY_", cli_prog_name="kvmesh gateway")
    # --tls-cert/--tls-key alone: TLS on the client-facing ports; --tls-ca too: mutual TLS inside the mesh.
    tls_ca_optional: ClassVar[bool] = True

    http_port: int = Field(8080, ge=0, le=65535, description="OpenAI-compatible HTTP; 0 = a free port")
    grpc_port: int = Field(8081, ge=0, le=65535, description="kvmesh.v1 Inference/Models; 0 = a free port")
    router_address: str = Field(
        "127.0.0.1:8090", description="the router's host:port, or several routers' comma-separated (failover)"
    )
    route_in_process_below: int = Field(
        1, ge=0,
        description="decide in this process (the router's library and settings, the same Redis index and load) "
        "while fewer requests than this are in flight here, saving the hop to the router at low load (1: when none "
        "is); 0: always the router service",
    )  # fmt: skip
    models: list[str] = Field(
        default_factory=lambda: [models.DEFAULT_MODEL],
        description="catalog names or folders whose tokenizers this gateway serves",
    )
    default_max_tokens: int = Field(
        512, ge=1, description="when a request names no max_tokens (OpenAI's /v1/completions: 16, as OpenAI's)"
    )
    http_keep_alive_s: int = Field(75, ge=1, description="idle HTTP keep-alive before the server closes")
    prefill_timeout_s: float = Field(
        30.0, gt=0, description="a disaggregated request's prefill after which its decode worker prefills instead"
    )
    max_migrations: int = Field(1, ge=0, description="times a request moves to another worker when its worker fails")
    stall_timeout_s: float = Field(
        30.0, gt=0,
        description="a request whose worker sent none of this gateway's requests anything this long moves to "
        "another worker (a stuck engine)",
    )  # fmt: skip
    request_timeout_s: float = Field(
        600.0, gt=0,
        description="longest a request may take (a gRPC client's sooner deadline wins); then 504 / DEADLINE_EXCEEDED "
        "and its engine request is cancelled",
    )  # fmt: skip
    mux: bool = Field(
        True,
        description="receive each worker model's tokens for all requests on one stream, a response per engine "
        "step (engines/mux.py); off: a response per request and token",
    )
    whole_answer_interval_ms: float = Field(
        200, ge=0, le=60_000,
        description="a non-streaming request's engine responses after the first token come at most this often "
        "(the tokens between ride together); 0: one per token; under half --stall-timeout-s",
    )  # fmt: skip
    max_body_bytes: int = Field(
        8 * 2**20, ge=1024, description="largest HTTP body and gRPC message a client may send; larger: 413"
    )
    max_messages: int = Field(1024, ge=1, description="chat messages per request")
    max_prompt_chars: int = Field(
        500_000, ge=1, description="characters of prompt text per request, checked before tokenizing"
    )
    max_stop_strings: int = Field(16, ge=0, description="stop strings per request")
    max_stop_chars: int = Field(512, ge=1, description="characters per stop string")
    max_stop_token_ids: int = Field(256, ge=0, description="stop_token_ids per request")
    max_queued: int = Field(
        256, ge=0, description="requests waiting for a worker, per priority, when every worker is full; more: 429"
    )
    queue_timeout_s: float = Field(30.0, gt=0, description="longest a request waits for a worker; then 429")
    stream_write_timeout_s: float = Field(
        DEFAULT_WRITE_TIMEOUT_S, gt=0,
        description="longest a streamed answer's write waits for a client that stopped reading; then the request "
        "is cancelled (the engine aborts it, the router frees its slot) and the stream cut off",
    )  # fmt: skip
    procs: int = Field(
        1, ge=1, le=256,
        description="processes serving the same HTTP and gRPC ports (SO_REUSEPORT: the kernel spreads connections), "
        "for more than one core; the first supervises the others (services/gateway/procs.py)",
    )  # fmt: skip
    drain_timeout_s: float = Field(
        30.0, gt=0, description="on SIGTERM, how long the requests in flight may take to finish; new ones are refused"
    )
    metrics_max_keys: int = Field(
        100, ge=1, description="API keys with a label of their own in the per-key metrics; the rest: 'other'"
    )
    log_requests: bool = Field(
        False,
        description="one INFO line a finished request (ids, model, status, tokens, TTFT, e2e, worker, trace id); "
        "off by default, as in vLLM: it costs ~50 us of the gateway's CPU a request",
    )

    @field_validator("router_address")
    @classmethod
    def _router_addresses(cls, value: str) -> str:
        addresses = [a.strip() for a in value.split(",")]
        for address in addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{address!r} is not host:port (several routers: comma-separated)")
        return ",".join(addresses)

    @model_validator(mode="after")
    def _whole_answers_not_stalled(self) -> GatewaySettings:
        # A non-streaming request alone on its worker hears from it once an interval (plus an engine
        # step); at the stall timeout it would be failed as stalled and moved.
        if self.whole_answer_interval_ms / 1000 >= self.stall_timeout_s / 2:
            raise ValueError(
                f"--whole-answer-interval-ms {self.whole_answer_interval_ms:g} must be under half of --stall-timeout-s "
                f"({self.stall_timeout_s:g} s): a non-streaming request alone on its worker hears from it only that "
                "often, and would be failed as stalled"
            )
        return self

    def input_limits(self) -> InputLimits:
        return InputLimits(self.max_messages, self.max_prompt_chars, self.max_stop_strings, self.max_stop_chars,
                           self.max_stop_token_ids)  # fmt: skip

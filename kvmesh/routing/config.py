"""How a router decides: its policies, the default one, the disaggregation threshold and the lease
of a request in flight."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field, model_validator

from kvmesh.routing.framework.plugins import SchedulingProfileSpec, build
from kvmesh.settings import CommonSettings
from kvmesh.v1 import router_pb2

DEFAULT_POLICIES = {
    # Dynamo's cost, then the overlap once more: on the Mooncake trace under load it keeps more of
    # the pooled cache's hits than Dynamo's cost alone, TTFT alike (bench.routing_quality, whose
    # latest figures are in bench/RESULTS.md).
    "kv-aware": SchedulingProfileSpec(
        scorers={"prefill_load": 1.0, "decode_load": 1.0, "kv_overlap": 1.0},
        picker="softmax",
        params={"softmax": {"temperature": 0.0}},
    ),
    # Dynamo's cost: prefill_weight · max(prefill + request − overlap, 0) + decode; lowest wins.
    "dynamo": SchedulingProfileSpec(
        scorers={"prefill_load": 1.0, "decode_load": 1.0}, picker="softmax", params={"softmax": {"temperature": 0.0}}
    ),
    "least-loaded": SchedulingProfileSpec(scorers={"least_loaded": 1.0}, picker="max_score"),
    "round-robin": SchedulingProfileSpec(picker="round_robin"),
    "random": SchedulingProfileSpec(picker="random"),
    "power-of-two": SchedulingProfileSpec(scorers={"least_loaded": 1.0}, picker="power_of_two"),
}


class RoutingConfig(BaseModel):
    """How a router decides; a gateway that decides in process asks the router for it
    (Router.Session's `settings`), so that both decide alike."""

    policy: str = Field("kv-aware", description="the default policy")
    policies: dict[str, SchedulingProfileSpec] = Field(default_factory=lambda: dict(DEFAULT_POLICIES))
    request_lease_s: float = Field(900.0, gt=0, description="forget a routed request never released after this")
    disagg_threshold_tokens: int = Field(
        2048, ge=0, description="prefill on a prefill worker from this many uncached prompt tokens on; 0: never"
    )

    @model_validator(mode="after")
    def _policies_build(self) -> RoutingConfig:
        if self.policy not in self.policies:
            raise ValueError(f"policy {self.policy!r} is not one of {', '.join(self.policies)}")
        for name, spec in self.policies.items():
            build(name, spec)  # unknown plugin types fail here, at start
        return self

    def to_proto(self) -> router_pb2.RoutingSettings:
        return router_pb2.RoutingSettings(
            policy=self.policy,
            policies_json=json.dumps({name: spec.model_dump() for name, spec in self.policies.items()}),
            disagg_threshold_tokens=self.disagg_threshold_tokens,
            request_lease_s=self.request_lease_s,
        )

    @classmethod
    def of_proto(cls, message: router_pb2.RoutingSettings) -> RoutingConfig:
        return cls(
            policy=message.policy,
            policies=json.loads(message.policies_json),
            disagg_threshold_tokens=message.disagg_threshold_tokens,
            request_lease_s=message.request_lease_s,
        )

    def routing(self) -> RoutingConfig:
        """These fields alone (from a service's settings, which have more)."""
        return RoutingConfig(**{name: getattr(self, name) for name in RoutingConfig.model_fields})


class RoutingSettings(CommonSettings, RoutingConfig):
    """The router service's: flags and environment (KVMESH_ROUTER_POLICY, ...)."""

"""The routing settings every process that decides shares: the router service and a gateway that
routes in its own process must decide alike."""

from __future__ import annotations

from pydantic import Field, model_validator

from kvmesh.routing.framework.plugins import SchedulingProfileSpec, build
from kvmesh.settings import CommonSettings

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


class RoutingSettings(CommonSettings):
    policy: str = Field("kv-aware", description="the default policy")
    policies: dict[str, SchedulingProfileSpec] = Field(default_factory=lambda: dict(DEFAULT_POLICIES))
    request_lease_s: float = Field(900.0, gt=0, description="forget a routed request never released after this")
    disagg_threshold_tokens: int = Field(
        2048, ge=0, description="prefill on a prefill worker from this many uncached prompt tokens on; 0: never"
    )

    @model_validator(mode="after")
    def _policies_build(self) -> RoutingSettings:
        if self.policy not in self.policies:
            raise ValueError(f"policy {self.policy!r} is not one of {', '.join(self.policies)}")
        for name, spec in self.policies.items():
            build(name, spec)  # unknown plugin types fail here, at start
        return self

"""The one list of plugin types (type name → factory) and building profiles from config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from kvmesh.routing.framework.profile import SchedulingProfile
from kvmesh.routing.plugins.filters.capacity import CapacityFilter
from kvmesh.routing.plugins.filters.draining import DrainingFilter
from kvmesh.routing.plugins.filters.excluded import ExcludedFilter
from kvmesh.routing.plugins.filters.model import ModelFilter
from kvmesh.routing.plugins.filters.role import RoleFilter
from kvmesh.routing.plugins.filters.unresponsive import UnresponsiveFilter
from kvmesh.routing.plugins.pickers.max_score import MaxScorePicker
from kvmesh.routing.plugins.pickers.power_of_two import PowerOfTwoPicker
from kvmesh.routing.plugins.pickers.random_pick import RandomPicker
from kvmesh.routing.plugins.pickers.round_robin import RoundRobinPicker
from kvmesh.routing.plugins.pickers.softmax import SoftmaxPicker
from kvmesh.routing.plugins.scorers.decode_load import DecodeLoadScorer
from kvmesh.routing.plugins.scorers.kv_overlap import KvOverlapScorer
from kvmesh.routing.plugins.scorers.least_loaded import LeastLoadedScorer
from kvmesh.routing.plugins.scorers.prefill_load import PrefillLoadScorer

FILTERS: dict[str, Callable[..., Any]] = {
    "model": ModelFilter,
    "role": RoleFilter,
    "excluded": ExcludedFilter,
    "capacity": CapacityFilter,
    "draining": DrainingFilter,
    "unresponsive": UnresponsiveFilter,
}
SCORERS: dict[str, Callable[..., Any]] = {
    "least_loaded": LeastLoadedScorer,
    "prefill_load": PrefillLoadScorer,
    "decode_load": DecodeLoadScorer,
    "kv_overlap": KvOverlapScorer,
}
PICKERS: dict[str, Callable[..., Any]] = {
    "max_score": MaxScorePicker,
    "round_robin": RoundRobinPicker,
    "random": RandomPicker,
    "power_of_two": PowerOfTwoPicker,
    "softmax": SoftmaxPicker,
}


class SchedulingProfileSpec(BaseModel):
    filters: list[str] = Field(
        default_factory=lambda: ["model", "role", "draining", "unresponsive", "excluded", "capacity"]
    )
    scorers: dict[str, float] = Field(default_factory=dict)
    picker: str = "max_score"
    # Per-plugin parameters, by type name.
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)


def build(name: str, spec: SchedulingProfileSpec) -> SchedulingProfile:
    def make(table: dict[str, Callable[..., Any]], kind: str, type_name: str) -> Any:
        if type_name not in table:
            raise ValueError(f"policy {name!r}: unknown {kind} {type_name!r}; known: {', '.join(table)}")
        return table[type_name](**spec.params.get(type_name, {}))

    return SchedulingProfile(
        name=name,
        filters=[make(FILTERS, "filter", f) for f in spec.filters],
        scorers=[(make(SCORERS, "scorer", s), w) for s, w in spec.scorers.items()],
        picker=make(PICKERS, "picker", spec.picker),
    )

"""The one list of plugin types (type name → factory) and building profiles from config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from services.router.framework.profile import SchedulingProfile
from services.router.plugins.filters.capacity import CapacityFilter
from services.router.plugins.filters.draining import DrainingFilter
from services.router.plugins.filters.excluded import ExcludedFilter
from services.router.plugins.filters.model import ModelFilter
from services.router.plugins.filters.role import RoleFilter
from services.router.plugins.filters.unresponsive import UnresponsiveFilter
from services.router.plugins.pickers.max_score import MaxScorePicker
from services.router.plugins.pickers.power_of_two import PowerOfTwoPicker
from services.router.plugins.pickers.random_pick import RandomPicker
from services.router.plugins.pickers.round_robin import RoundRobinPicker
from services.router.plugins.pickers.softmax import SoftmaxPicker
from services.router.plugins.scorers.decode_load import DecodeLoadScorer
from services.router.plugins.scorers.kv_overlap import KvOverlapScorer
from services.router.plugins.scorers.least_loaded import LeastLoadedScorer
from services.router.plugins.scorers.prefill_load import PrefillLoadScorer

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

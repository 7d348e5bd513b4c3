"""A routing profile: ordered filters, weighted scorers, exactly one picker."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from kvmesh.routing.framework.types import Candidate, Filter, Picker, Request, Scorer


@dataclass
class Verdict:
    """One candidate's fate, for Explain."""

    candidate: Candidate
    filtered_by: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    total: float = 0.0


@dataclass
class RoutingDecision:
    chosen: Candidate | None
    candidates: list[Candidate]
    # The filter that emptied the candidate set, when nothing is left.
    emptied_by: str = ""
    # worker id → the filter that dropped it; scorer name → worker id → score; worker id → weighted sum.
    filtered_by: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)

    @cached_property
    def verdicts(self) -> list[Verdict]:
        """Every candidate's fate, in candidate order: built only when asked (Explain, a recording
        span), not on every Route."""
        return [
            Verdict(
                c,
                self.filtered_by.get(c.id, ""),
                {name: by_worker[c.id] for name, by_worker in self.scores.items() if c.id in by_worker},
                self.totals.get(c.id, 0.0),
            )
            for c in self.candidates
        ]


@dataclass
class SchedulingProfile:
    name: str
    filters: list[Filter]
    scorers: list[tuple[Scorer, float]]
    picker: Picker

    def run(self, request: Request, candidates: list[Candidate], dry_run: bool = False) -> RoutingDecision:
        decision = RoutingDecision(None, candidates)
        alive = candidates
        for f in self.filters:
            kept = f.keep(request, alive)
            if kept is not alive:
                kept_ids = {c.id for c in kept}
                decision.filtered_by.update((c.id, f.name) for c in alive if c.id not in kept_ids)
                if alive and not kept:
                    decision.emptied_by = f.name
            alive = kept
        if not alive:
            return decision
        totals = dict.fromkeys([c.id for c in alive], 0.0)
        for scorer, weight in self.scorers:
            scores = decision.scores[scorer.name] = scorer.score(request, alive)
            totals = {worker_id: total + weight * scores[worker_id] for worker_id, total in totals.items()}
        decision.totals = totals
        decision.chosen = self.picker.pick(list(zip(alive, totals.values(), strict=True)), dry_run)
        return decision

"""A routing profile: ordered filters, weighted scorers, exactly one picker."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.router.framework.types import Candidate, Filter, Picker, Request, Scorer


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
    verdicts: list[Verdict]
    # The filter that emptied the candidate set, when nothing is left.
    emptied_by: str = ""


@dataclass
class SchedulingProfile:
    name: str
    filters: list[Filter]
    scorers: list[tuple[Scorer, float]]
    picker: Picker

    def run(self, request: Request, candidates: list[Candidate], dry_run: bool = False) -> RoutingDecision:
        verdicts = {c.id: Verdict(c) for c in candidates}
        alive = list(candidates)
        emptied_by = ""
        for f in self.filters:
            kept = []
            for c in alive:
                if f.keep(request, c):
                    kept.append(c)
                else:
                    verdicts[c.id].filtered_by = f.name
            if alive and not kept:
                emptied_by = f.name
            alive = kept
        if not alive:
            return RoutingDecision(None, list(verdicts.values()), emptied_by)
        for scorer, weight in self.scorers:
            for worker_id, value in scorer.score(request, alive).items():
                verdict = verdicts[worker_id]
                verdict.scores[scorer.name] = value
                verdict.total += weight * value
        chosen = self.picker.pick([(c, verdicts[c.id].total) for c in alive], dry_run)
        return RoutingDecision(chosen, list(verdicts.values()))

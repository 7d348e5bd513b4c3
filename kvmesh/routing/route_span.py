"""What a Route decided, on its span (the RPC's, or the Session route's): the policy, the chosen
worker(s), the predicted cached tokens, and every candidate's overlap, load and verdict as one
compact JSON attribute. Nothing is built unless the span is recording (tracing on and sampled)."""

from __future__ import annotations

import json

from opentelemetry import trace

from kvmesh.routing.framework.profile import RoutingDecision, Verdict


def record(
    profile_name: str,
    decision: RoutingDecision,
    prefill: RoutingDecision | None = None,
    predicted_cached_tokens: int | None = None,
) -> None:
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("kvmesh.policy", profile_name)
    span.set_attribute("kvmesh.candidates", _compact(decision.verdicts))
    if decision.chosen is not None:
        span.set_attribute("kvmesh.worker", decision.chosen.id)
        span.set_attribute("kvmesh.overlap_blocks", decision.chosen.overlap_blocks)
    else:
        span.set_attribute("kvmesh.emptied_by", decision.emptied_by)
    if prefill is not None and prefill.chosen is not None:
        span.set_attribute("kvmesh.prefill_worker", prefill.chosen.id)
        span.set_attribute("kvmesh.prefill_overlap_blocks", prefill.chosen.overlap_blocks)
        span.set_attribute("kvmesh.prefill_candidates", _compact(prefill.verdicts))
    if predicted_cached_tokens is not None:
        span.set_attribute("kvmesh.predicted_cached_tokens", predicted_cached_tokens)


def _compact(verdicts: list[Verdict]) -> str:
    """worker id → its overlap (blocks), load (in flight, prefill and decode blocks) and either
    its weighted score or the filter that dropped it."""
    figures = {}
    for v in verdicts:
        load = v.candidate.load
        figures[v.candidate.id] = {
            "overlap": v.candidate.overlap_blocks,
            "in_flight": load.in_flight,
            "prefill": load.prefill_blocks,
            "decode": load.decode_blocks,
            **({"filtered_by": v.filtered_by} if v.filtered_by else {"score": round(v.total, 3)}),
        }
    return json.dumps(figures, separators=(",", ":"))

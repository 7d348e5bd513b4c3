"""The request's prompt blocks a worker already holds (KV overlap from the index). Positive: more
is better. Beside prefill_load, whose cost already subtracts the overlap once, its weight buys
cache affinity at the price of load balance (llm-d's prefix-cache scorer, as a separate knob)."""

from kvmesh.routing.framework.types import Candidate, Request


class KvOverlapScorer:
    name = "kv_overlap"

    def score(self, request: Request, candidates: list[Candidate]) -> dict[str, float]:
        return {c.id: 1.0 * c.overlap_blocks for c in candidates}  # a float without a call

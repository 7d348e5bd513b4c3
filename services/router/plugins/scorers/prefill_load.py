"""The prefill work a worker would have if it took the request: blocks already being prefilled
there plus the request's blocks it does not hold (KV overlap from the index). Negative: less
is better. Dynamo's cost term `max(active_prefill + request_blocks − overlap, 0)`."""

from services.router.framework.types import Candidate, Request


class PrefillLoadScorer:
    name = "prefill_load"

    def score(self, request: Request, candidates: list[Candidate]) -> dict[str, float]:
        return {
            c.id: -float(max(c.load.prefill_blocks + request.blocks_on(c) - c.overlap_blocks, 0)) for c in candidates
        }

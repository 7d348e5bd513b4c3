"""The prefill work a worker would have if it took the request: blocks already being prefilled
there plus the request's blocks it does not hold (KV overlap from the index). Negative: less
is better. Dynamo's cost term `max(active_prefill + request_blocks − overlap, 0)`."""

from kvmesh.routing.framework.types import Candidate, Request


class PrefillLoadScorer:
    name = "prefill_load"

    def score(self, request: Request, candidates: list[Candidate]) -> dict[str, float]:
        prompt_blocks: dict[int, int] = {}  # by KV block size: a mesh has one or two
        scores = {}
        for c in candidates:
            blocks = prompt_blocks.get(size := c.record.kv_block_size)
            if blocks is None:
                blocks = prompt_blocks[size] = request.blocks_on(c)
            # −max(cost, 0) as a float, without two calls a worker (they cost more than the sum)
            cost = c.load.prefill_blocks + blocks - c.overlap_blocks
            scores[c.id] = -1.0 * cost if cost > 0 else -0.0
        return scores

"""KV blocks of the requests decoding on a worker. Negative: less is better."""

from kvmesh.routing.framework.types import Candidate, Request


class DecodeLoadScorer:
    name = "decode_load"

    def score(self, request: Request, candidates: list[Candidate]) -> dict[str, float]:
        return {c.id: -1.0 * c.load.decode_blocks for c in candidates}  # a float without a call

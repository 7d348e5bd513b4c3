"""Whether a request is split into a prefill phase on a prefill worker and a decode phase on a
decode worker: only when it pays. The decode worker is chosen first (the whole request, by the
profile); if the prompt tokens it does not already hold reach the threshold and a prefill worker
can take them, the prompt is prefilled there (chosen by the same profile: KV overlap and load)
and the decode worker reads the KV. Otherwise the request stays on one worker (Dynamo keeps
< 2048 uncached tokens local)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from kvmesh.routing.framework.profile import RoutingDecision, SchedulingProfile
from kvmesh.routing.framework.types import Candidate, Request
from kvmesh.v1 import worker_pb2


@dataclass
class Split:
    disaggregated: bool
    reason: str
    uncached_tokens: int
    prefill: RoutingDecision | None = None

    @property
    def prefill_worker(self) -> Candidate | None:
        return self.prefill.chosen if self.prefill and self.disaggregated else None


def uncached_tokens(request: Request, worker: Candidate) -> int:
    size = worker.record.kv_block_size or request.block_size or 1
    return max(request.num_tokens - worker.overlap_blocks * size, 0)


def split(
    profile: SchedulingProfile,
    request: Request,
    decode: Candidate,
    candidates: list[Candidate],
    threshold_tokens: int,
    aggregated_only: bool,
    dry_run: bool,
) -> Split:
    uncached = uncached_tokens(request, decode)
    if aggregated_only:
        return Split(False, "the caller asked for one worker (aggregated_only)", uncached)
    if decode.record.role != worker_pb2.ROLE_DECODE:
        return Split(False, "the chosen worker is aggregated", uncached)
    if threshold_tokens <= 0:
        return Split(False, "disaggregation is off (threshold 0)", uncached)
    if uncached < threshold_tokens:
        return Split(
            False, f"{uncached} uncached prompt tokens < threshold {threshold_tokens}: prefill locally", uncached
        )
    prefill = profile.run(replace(request, roles=(worker_pb2.ROLE_PREFILL,)), candidates, dry_run=dry_run)
    if prefill.chosen is None:
        why = "every prefill worker is at capacity" if prefill.emptied_by == "capacity" else "no prefill worker"
        return Split(False, f"{why}: prefill locally", uncached, prefill)
    return Split(
        True, f"{uncached} uncached prompt tokens ≥ threshold {threshold_tokens}: prefill on {prefill.chosen.id}",
        uncached, prefill,
    )  # fmt: skip

"""One routing decision and its bookkeeping, proto in and proto out: the candidates (one Redis
read), the profile's pick, disaggregation, the in-flight load counted; MarkPrefilled and Release
move and free that load. The router service serves it; a gateway runs it in process too."""

from __future__ import annotations

from prometheus_client import Counter

from kvmesh.errors import AtCapacity, InvalidArgument, KvmeshError, Unavailable
from kvmesh.routing import disaggregation, route_span
from kvmesh.routing.accounting import Accounting
from kvmesh.routing.candidates import CandidateSource
from kvmesh.routing.framework.profile import RoutingDecision, SchedulingProfile
from kvmesh.routing.framework.types import Candidate, Request
from kvmesh.routing.predictions import Predictions, predicted_cached_tokens
from kvmesh.v1 import router_pb2, worker_pb2

DECISIONS = Counter("kvmesh_router_decisions", "Routing decisions", ["policy", "worker"])
DISAGGREGATED = Counter("kvmesh_router_disaggregated", "Requests split into prefill and decode", ["policy"])
NO_WORKER = Counter("kvmesh_router_no_worker", "Requests no worker could take", ["reason"])


class Router:
    def __init__(
        self,
        candidates: CandidateSource,
        accounting: Accounting,
        profiles: dict[str, SchedulingProfile],
        default: str,
        disagg_threshold_tokens: int = 0,
        predictions: Predictions | None = None,
    ):
        self.candidates = candidates
        self.accounting = accounting
        self.profiles = profiles
        self.default = default
        self.disagg_threshold_tokens = disagg_threshold_tokens
        self.predictions = predictions or Predictions()

    async def decide(
        self, message: router_pb2.RouteRequest, dry_run: bool
    ) -> tuple[SchedulingProfile, Request, RoutingDecision, disaggregation.Split | None]:
        if not message.model:
            raise InvalidArgument("model: required", param="model")
        if not dry_run and not message.request_id:
            raise InvalidArgument("request_id: required (Release names it)", param="request_id")
        name = message.policy or self.default
        profile = self.profiles.get(name)
        if profile is None:
            raise InvalidArgument(f"policy: {name!r} is not one of {', '.join(self.profiles)}", param="policy")
        request = Request(
            model=message.model,
            request_id=message.request_id,
            num_tokens=message.num_tokens,
            block_hashes=tuple(message.block_hashes),
            block_size=message.block_size,
            excluded=frozenset(message.exclude_worker_ids),
        )
        if request.block_hashes and not request.block_size:
            raise InvalidArgument("block_size: required with block_hashes", param="block_size")
        candidates = await self.candidates.gather(request)
        decision = profile.run(request, candidates, dry_run=dry_run)
        if decision.chosen is None:
            return profile, request, decision, None
        split = disaggregation.split(
            profile,
            request,
            decision.chosen,
            candidates,
            self.disagg_threshold_tokens,
            message.aggregated_only,
            dry_run,
        )
        return profile, request, decision, split

    async def route(self, message: router_pb2.RouteRequest) -> router_pb2.RouteResponse:
        """Records the decision on the current span (route_span.py)."""
        profile, request, decision, split = await self.decide(message, dry_run=False)
        chosen = decision.chosen
        if chosen is None:
            route_span.record(profile.name, decision)
            raise _no_worker(request, decision)
        blocks = request.blocks_on(chosen)
        response = router_pb2.RouteResponse(
            worker=chosen.record,
            policy=profile.name,
            overlap_blocks=chosen.overlap_blocks,
            disaggregation_reason=split.reason,
        )
        if (prefill := split.prefill_worker) is not None:
            # The decode worker reads the KV instead of computing it; the prefill worker's share
            # ends at MarkPrefilled.
            self.accounting.add(request.request_id, chosen.id, 0, blocks)
            prefill_blocks = max(request.blocks_on(prefill) - prefill.overlap_blocks, 0)
            self.accounting.add(prefill_entry(request.request_id), prefill.id, prefill_blocks, prefill_blocks)
            response.prefill_worker.CopyFrom(prefill.record)
            response.prefill_overlap_blocks = prefill.overlap_blocks
            DISAGGREGATED.labels(profile.name).inc()
        else:
            self.accounting.add(request.request_id, chosen.id, max(blocks - chosen.overlap_blocks, 0), blocks)
        DECISIONS.labels(profile.name, chosen.id).inc()
        # The prompt's cache hits are the prefill worker's when there is one.
        predicted = self._expect(request, split.prefill_worker or chosen)
        route_span.record(profile.name, decision, split.prefill if split.disaggregated else None, predicted)
        return response

    def _expect(self, request: Request, computes_prompt: Candidate) -> int | None:
        """Keeps the cached tokens predicted on the worker that computes the prompt, for Release."""
        block_size = computes_prompt.record.kv_block_size or request.block_size
        if not block_size:
            return None
        predicted = predicted_cached_tokens(computes_prompt.overlap_blocks, request.num_tokens, block_size)
        self.predictions.expect(request.request_id, computes_prompt.id, predicted, block_size)
        return predicted

    def prefilled(self, request_id: str) -> None:
        self.accounting.mark_prefilled(request_id)
        self.accounting.release(prefill_entry(request_id))

    def released(self, request_id: str, cached_tokens: int | None = None) -> None:
        """`cached_tokens`: what the engine found cached, checked against the prediction."""
        self.accounting.release(request_id)
        self.accounting.release(prefill_entry(request_id))
        self.predictions.settle(request_id, cached_tokens)


def prefill_entry(request_id: str) -> str:
    """The accounting entry of a disaggregated request's prefill phase."""
    return f"{request_id}/prefill"


def _no_worker(request: Request, decision: RoutingDecision) -> KvmeshError:
    NO_WORKER.labels(decision.emptied_by or "none").inc()
    if decision.emptied_by == "capacity":
        return AtCapacity(f"every worker serving {request.model!r} is at capacity; retry later")
    roles = " or ".join(worker_pb2.Role.Name(r).removeprefix("ROLE_").lower() for r in request.roles)
    if not decision.candidates:
        return Unavailable("no live worker in the registry")
    if decision.emptied_by == "excluded":
        return Unavailable(f"no live worker for model {request.model!r} is left but the ones that failed")
    return Unavailable(f"no live worker serves model {request.model!r} as {roles}")

"""Router RPCs: proto ↔ domain only; the decision itself is the profile's."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from opentelemetry import trace
from prometheus_client import Counter

from kvmesh import telemetry
from kvmesh.errors import InvalidArgument, KvmeshError, ResourceExhausted, Unavailable
from kvmesh.registry import now_ms
from kvmesh.streams import coalesce
from kvmesh.v1 import router_pb2, router_pb2_grpc, worker_pb2
from services.router import disaggregation, route_span
from services.router.accounting import Accounting
from services.router.candidates import CandidateSource
from services.router.framework.profile import RoutingDecision, SchedulingProfile, Verdict
from services.router.framework.types import Candidate, Request
from services.router.predictions import Outcome, Predictions, predicted_cached_tokens

DECISIONS = Counter("kvmesh_router_decisions", "Routing decisions", ["policy", "worker"])
DISAGGREGATED = Counter("kvmesh_router_disaggregated", "Requests split into prefill and decode", ["policy"])
TRACER = trace.get_tracer("kvmesh.router")
log = logging.getLogger(__name__)
NO_WORKER = Counter("kvmesh_router_no_worker", "Requests no worker could take", ["reason"])


class RouterServicer(router_pb2_grpc.RouterServicer):
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
        self.workers = candidates.workers
        self.accounting = accounting
        self.profiles = profiles
        self.default = default
        self.disagg_threshold_tokens = disagg_threshold_tokens
        self.predictions = predictions or Predictions()

    async def _decide(
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

    async def Route(self, message, context):
        return await self._route(message)

    async def _route(self, message: router_pb2.RouteRequest) -> router_pb2.RouteResponse:
        profile, request, decision, split = await self._decide(message, dry_run=False)
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

    async def Explain(self, message, context):
        profile, _, decision, split = await self._decide(message.request, dry_run=True)
        now = time.monotonic()
        response = router_pb2.ExplainResponse(
            policy=profile.name,
            chosen_worker_id=decision.chosen.id if decision.chosen else "",
            candidates=[_candidate(v) for v in decision.verdicts],
            recent_predictions=[_prediction(o, now) for o in reversed(self.predictions.recent)],
        )
        if split is not None:
            prefill = split.prefill_worker
            response.disaggregation.CopyFrom(
                router_pb2.Disaggregation(
                    disaggregated=split.disaggregated,
                    reason=split.reason,
                    uncached_tokens=split.uncached_tokens,
                    threshold_tokens=self.disagg_threshold_tokens,
                    prefill_worker_id=prefill.id if prefill else "",
                    prefill_candidates=[_candidate(v) for v in split.prefill.verdicts] if split.prefill else [],
                )
            )
        return response

    async def Workers(self, message, context):
        now = now_ms()
        out = []
        for candidate in await self.candidates.gather(Request(model=message.model, request_id="", num_tokens=0)):
            live = self.workers.workers[candidate.id]
            if message.model and live.record.model != message.model:
                continue
            load = candidate.load
            out.append(
                router_pb2.WorkerStatus(
                    record=live.record,
                    in_flight=load.in_flight,
                    prefill_blocks=load.prefill_blocks,
                    decode_blocks=load.decode_blocks,
                    lease_remaining_ms=max(live.lease_expires_ms - now, 0),
                )
            )
        return router_pb2.WorkersResponse(workers=sorted(out, key=lambda w: w.record.id))

    async def MarkPrefilled(self, message, context):
        self._prefilled(message.request_id)
        return router_pb2.MarkPrefilledResponse()

    async def Release(self, message, context):
        self._released(message.request_id, _cached_tokens(message))
        return router_pb2.ReleaseResponse()

    def _prefilled(self, request_id: str) -> None:
        self.accounting.mark_prefilled(request_id)
        self.accounting.release(prefill_entry(request_id))

    def _released(self, request_id: str, cached_tokens: int | None = None) -> None:
        self.accounting.release(request_id)
        self.accounting.release(prefill_entry(request_id))
        self.predictions.settle(request_id, cached_tokens)

    async def Session(self, requests, context):
        """Routes concurrently as the messages come; answers go out as the decisions are made."""
        answers: asyncio.Queue[router_pb2.SessionResponse | None] = asyncio.Queue()
        routing: dict[str, asyncio.Task] = {}  # request id → its Route, while it runs
        summary = router_pb2.SessionSummary()

        def after_route(request_id: str, bookkeeping) -> None:
            # A caller may send a request's Release before its Route is decided: apply it after.
            task = routing.get(request_id)
            if task is None:
                bookkeeping(request_id)
            else:
                task.add_done_callback(lambda _: bookkeeping(request_id))

        def handle(message: router_pb2.SessionRequest) -> None:
            kind = message.WhichOneof("kind")
            if kind == "route":
                summary.routed += 1
                request_id = message.route.request_id
                task = routing[request_id] = asyncio.create_task(self._session_route(message.route, answers))
                task.add_done_callback(lambda _, r=request_id: routing.pop(r, None))
            elif kind == "prefilled":
                summary.prefilled += 1
                after_route(message.prefilled, self._prefilled)
            elif kind == "released":
                summary.released += 1
                after_route(message.released, self._released)
            elif kind == "release":
                summary.released += 1
                cached_tokens = _cached_tokens(message.release)
                after_route(message.release.request_id, lambda rid: self._released(rid, cached_tokens))
            elif not message.more:
                raise InvalidArgument("SessionRequest: one of route, prefilled, released, release (or more) required")
            for further in message.more:
                handle(further)

        async def read() -> None:
            try:
                async for message in requests:
                    handle(message)
                await asyncio.gather(*routing.values())
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield coalesce(answer, answers, router_pb2.SessionResponse)
            await reader  # its failure (a bad message, a broken stream) ends the call with it
            yield router_pb2.SessionResponse(summary=summary)
        finally:
            reader.cancel()
            for task in list(routing.values()):
                task.cancel()

    async def _session_route(self, message: router_pb2.RouteRequest, answers: asyncio.Queue) -> None:
        parent = telemetry.extract(dict(message.trace_context))
        with TRACER.start_as_current_span("kvmesh.route", context=parent, kind=trace.SpanKind.SERVER):
            try:
                answer = router_pb2.SessionResponse(request_id=message.request_id, route=await self._route(message))
            except KvmeshError as e:
                error = router_pb2.RouteError(code=e.grpc_code.value[0], message=e.message)
                answer = router_pb2.SessionResponse(request_id=message.request_id, error=error)
            except Exception as e:  # noqa: BLE001 - the request is answered whatever happened
                log.exception("route %s failed", message.request_id)
                error = router_pb2.RouteError(code=grpc.StatusCode.INTERNAL.value[0], message=f"router: {e}")
                answer = router_pb2.SessionResponse(request_id=message.request_id, error=error)
        answers.put_nowait(answer)


def prefill_entry(request_id: str) -> str:
    """The accounting entry of a disaggregated request's prefill phase."""
    return f"{request_id}/prefill"


def _candidate(v: Verdict) -> router_pb2.Candidate:
    return router_pb2.Candidate(
        worker_id=v.candidate.id,
        filtered_by=v.filtered_by,
        overlap_blocks=v.candidate.overlap_blocks,
        prefill_blocks=v.candidate.load.prefill_blocks,
        decode_blocks=v.candidate.load.decode_blocks,
        in_flight=v.candidate.load.in_flight,
        score=v.total,
        scores=v.scores,
    )


def _prediction(outcome: Outcome, now: float) -> router_pb2.Prediction:
    return router_pb2.Prediction(
        request_id=outcome.request_id,
        worker_id=outcome.worker_id,
        predicted_cached_tokens=outcome.predicted,
        actual_cached_tokens=outcome.actual,
        misprediction=outcome.misprediction,
        age_ms=int((now - outcome.released_at) * 1000),
    )


def _cached_tokens(release: router_pb2.ReleaseRequest) -> int | None:
    return release.cached_tokens.value if release.HasField("cached_tokens") else None


def _no_worker(request: Request, decision: RoutingDecision) -> KvmeshError:
    NO_WORKER.labels(decision.emptied_by or "none").inc()
    if decision.emptied_by == "capacity":
        return ResourceExhausted(f"every worker serving {request.model!r} is at capacity; retry later")
    roles = " or ".join(worker_pb2.Role.Name(r).removeprefix("ROLE_").lower() for r in request.roles)
    if not decision.candidates:
        return Unavailable("no live worker in the registry")
    if decision.emptied_by == "excluded":
        return Unavailable(f"no live worker for model {request.model!r} is left but the ones that failed")
    return Unavailable(f"no live worker serves model {request.model!r} as {roles}")

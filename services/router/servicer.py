"""Router RPCs: proto ↔ domain only; the decision and its bookkeeping are kvmesh/routing/router.py's."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from opentelemetry import trace

from kvmesh import telemetry
from kvmesh.errors import InvalidArgument, KvmeshError
from kvmesh.registry import now_ms
from kvmesh.routing.framework.profile import Verdict
from kvmesh.routing.framework.types import Request
from kvmesh.routing.predictions import Outcome
from kvmesh.routing.router import Router
from kvmesh.streams import coalesce
from kvmesh.v1 import router_pb2, router_pb2_grpc

TRACER = trace.get_tracer("kvmesh.router")
log = logging.getLogger(__name__)


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, router: Router, settings: router_pb2.RoutingSettings | None = None):
        """`settings`: how `router` decides, for a Session that asks."""
        self.router = router
        self.settings = settings or router_pb2.RoutingSettings()

    async def Route(self, message, context):
        return await self.router.route(message)

    async def Explain(self, message, context):
        profile, _, decision, split = await self.router.decide(message.request, dry_run=True)
        now = time.monotonic()
        response = router_pb2.ExplainResponse(
            policy=profile.name,
            chosen_worker_id=decision.chosen.id if decision.chosen else "",
            candidates=[_candidate(v) for v in decision.verdicts],
            recent_predictions=[_prediction(o, now) for o in reversed(self.router.predictions.recent)],
        )
        if split is not None:
            prefill = split.prefill_worker
            response.disaggregation.CopyFrom(
                router_pb2.Disaggregation(
                    disaggregated=split.disaggregated,
                    reason=split.reason,
                    uncached_tokens=split.uncached_tokens,
                    threshold_tokens=self.router.disagg_threshold_tokens,
                    prefill_worker_id=prefill.id if prefill else "",
                    prefill_candidates=[_candidate(v) for v in split.prefill.verdicts] if split.prefill else [],
                )
            )
        return response

    async def Workers(self, message, context):
        now = now_ms()
        out = []
        candidates = self.router.candidates
        for candidate in await candidates.gather(Request(model=message.model, request_id="", num_tokens=0)):
            live = candidates.workers.workers[candidate.id]
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
        self.router.prefilled(message.request_id)
        return router_pb2.MarkPrefilledResponse()

    async def Release(self, message, context):
        self.router.released(message.request_id, _cached_tokens(message))
        return router_pb2.ReleaseResponse()

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
                after_route(message.prefilled, self.router.prefilled)
            elif kind == "released":
                summary.released += 1
                after_route(message.released, self.router.released)
            elif kind == "release":
                summary.released += 1
                cached_tokens = _cached_tokens(message.release)
                after_route(message.release.request_id, lambda rid: self.router.released(rid, cached_tokens))
            elif kind == "settings":
                answers.put_nowait(router_pb2.SessionResponse(settings=self.settings))
            elif not message.more:
                raise InvalidArgument(
                    "SessionRequest: one of route, prefilled, released, release, settings (or more) required"
                )
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
                answer = router_pb2.SessionResponse(
                    request_id=message.request_id, route=await self.router.route(message)
                )
            except KvmeshError as e:
                error = router_pb2.RouteError(code=e.grpc_code.value[0], message=e.message)
                answer = router_pb2.SessionResponse(request_id=message.request_id, error=error)
            except Exception as e:  # noqa: BLE001 - the request is answered whatever happened
                log.exception("route %s failed", message.request_id)
                error = router_pb2.RouteError(code=grpc.StatusCode.INTERNAL.value[0], message=f"router: {e}")
                answer = router_pb2.SessionResponse(request_id=message.request_id, error=error)
        answers.put_nowait(answer)


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

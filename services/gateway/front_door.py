"""What a parsed request passes before and while it runs, for both fronts: its key's quotas admit
it (kvmesh/quota.py: one Redis call, shared by every gateway), it waits its fair turn when the
mesh is full (admission.py, by its key and priority), and its completion tokens are charged as
they stream and its usage recorded when it ends. The fronts check the key's models before they
tokenize."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from opentelemetry import context as otel_context

from kvmesh.api_keys import ApiKey
from kvmesh.quota import Metered, Quotas, RateLimited
from kvmesh.sampling import SamplingParams
from services.gateway.generation import Chunk, Generator, Ticket
from services.gateway.key_metrics import KeyMetrics
from services.gateway.served import ServedModel

QUEUE_HEADER = "x-kvmesh-queue-ms"


@dataclass
class Pass:
    """A request at the door: its chunks (admission happens as the first is asked for, so a
    request never started holds nothing), and the headers its answer carries once the first
    chunk came (its key's rate limits, the time it queued)."""

    ticket: Ticket
    chunks: AsyncIterator[Chunk] | None = None
    rate_headers: dict[str, str] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        return {**self.rate_headers, QUEUE_HEADER: f"{self.ticket.queued_s * 1000:.1f}"}


class FrontDoor:
    def __init__(self, generator: Generator, quotas: Quotas | None, key_metrics: KeyMetrics):
        """`quotas`: None when auth is off (no keys, nothing to meter)."""
        self.generator = generator
        self.quotas = quotas
        self.key_metrics = key_metrics

    def enter(
        self,
        caller: ApiKey | None,
        model: ServedModel,
        prompt_ids: list[int],
        sampling: SamplingParams,
        request_id: str,
        parent: otel_context.Context | None = None,
        whole: bool = False,
        timeout_s: float | None = None,
    ) -> Pass:
        """`timeout_s`: the time the client gave the request (its gRPC deadline), if it gave one."""
        ticket = Ticket(caller.name, caller.priority) if caller is not None else Ticket()
        ticket.cost = len(prompt_ids) + sampling.max_tokens
        admitted = Pass(ticket)
        chunks = self.generator.generate(model, prompt_ids, sampling, request_id, parent, whole, ticket, timeout_s)
        # The headers dict, not the Pass: a Pass holding the generator that holds it would be a cycle,
        # and an abandoned request's router slot would wait for the garbage collector.
        admitted.chunks = self._metered(caller, admitted.rate_headers, model.name, request_id, len(prompt_ids), chunks)
        return admitted

    async def _metered(
        self, caller: ApiKey | None, rate_headers: dict[str, str], model: str, request_id: str, prompt_tokens: int,
        chunks: AsyncIterator[Chunk],
    ) -> AsyncIterator[Chunk]:  # fmt: skip
        metered: Metered | None = None
        if caller is not None and self.quotas is not None:
            try:
                metered = await self.quotas.admit(caller, request_id, prompt_tokens)
            except Exception as e:
                self.key_metrics.request(caller.name, "429" if isinstance(e, RateLimited) else "error")
                await chunks.aclose()
                raise
            rate_headers.update(metered.headers)
        completion, cached, status = 0, 0, "error"
        try:
            async for chunk in chunks:
                completion += len(chunk.token_ids)
                if metered is not None:
                    metered.completed(len(chunk.token_ids))
                if chunk.usage is not None:
                    completion, cached = chunk.usage.completion_tokens, chunk.usage.cached_tokens
                    status = "200"
                yield chunk
        finally:
            try:
                await chunks.aclose()
            finally:
                if metered is not None:
                    metered.end(model, prompt_tokens, cached, completion)
                if caller is not None:
                    self.key_metrics.request(caller.name, status)
                    self.key_metrics.tokens(caller.name, prompt_tokens, cached, completion)

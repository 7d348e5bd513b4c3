"""An engine request's phases as spans under its `engine.request`, told apart by its first token:
before it, `engine.prefill` (the prompt computed here, cached part skipped) or, on a decode
instance given a prefill instance's KV, `engine.kv_transfer` (the KV pulled by NIXL, the wait for
it and the step that makes the first token); after it, `engine.decode` to the end. One span each,
their counts set when they end, never one per token; with tracing off nothing is made."""

from __future__ import annotations

from opentelemetry import trace

from kvmesh import telemetry
from kvmesh.engine_wire import EngineDelta

TRACER = trace.get_tracer("kvmesh.engine")


class PhaseSpans:
    def __init__(self, prompt_tokens: int, kv_transfer: dict | None) -> None:
        """`kv_transfer`: the request's kv_transfer_params (a decode instance's; {} or None: prefill here)."""
        name, attributes = "engine.prefill", {"kvmesh.prompt_tokens": prompt_tokens}
        if kv_transfer:
            name = "engine.kv_transfer"
            if "remote_host" in kv_transfer:  # vLLM's NIXL connector: the prefill instance's side channel
                attributes["kvmesh.kv_source"] = f"{kv_transfer['remote_host']}:{kv_transfer.get('remote_port')}"
        self.first = telemetry.start_span(TRACER, name, attributes=attributes)
        self.first_open = True
        self.decode: trace.Span | None = None
        self.tokens = 0
        self.finish_reason: str | None = None

    def __enter__(self) -> PhaseSpans:
        return self

    def saw(self, delta: EngineDelta) -> None:
        """Each delta the engine yields."""
        self.tokens += len(delta.token_ids)
        self.finish_reason = delta.finish_reason
        if self.first_open and (delta.token_ids or delta.finish_reason is not None):
            self.first.set_attribute("kvmesh.cached_tokens", delta.cached_tokens)
            self.first.end()
            self.first_open = False
            if delta.finish_reason is None:
                self.decode = telemetry.start_span(TRACER, "engine.decode")

    def __exit__(self, kind, error, _tb) -> None:
        """The request is over (`error`: what ended it, if anything did): the open span ends."""
        span = self.first if self.first_open else self.decode
        self.first_open = False
        if span is None:
            return
        span.set_attributes({"kvmesh.output_tokens": self.tokens, "kvmesh.finish_reason": self.finish_reason or ""})
        telemetry.fail(span, error)
        span.end()

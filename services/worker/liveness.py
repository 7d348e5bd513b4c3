"""Whether the worker's engine answers. The process running says nothing: a Triton that hangs
(SIGSTOP, a long GC pause, a stuck CUDA call) still runs, and the worker would renew its lease for
it while every request sent there waits. So each heartbeat asks Triton whether the model is ready,
with a short deadline; a few misses in a row (one slow answer is not a hang) make the worker
unresponsive, and one answer makes it responsive again."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

# Triton answers readiness from its own threads, at once even while the engine is busy.
PROBE_TIMEOUT_S = 1.0
# With the default lease (5 s, a heartbeat every 1.7 s) a hung engine is marked within ~4 s.
MISSES = 2


class ReadinessClient(Protocol):
    """What is asked of Triton's client (tritonclient.grpc.aio.InferenceServerClient)."""

    async def is_model_ready(
        self, model_name: str, model_version: str = "", headers=None, client_timeout=None
    ) -> bool: ...


@dataclass
class EngineLiveness:
    client: ReadinessClient
    timeout_s: float = PROBE_TIMEOUT_S
    misses_allowed: int = MISSES
    misses: int = 0  # asks in a row that got no "ready" in time

    async def responsive(self, triton_model: str) -> bool:
        """Asks once; False from the `misses_allowed`-th miss in a row until an answer."""
        try:
            # The deadline goes to Triton with the call; the timeout also bounds a channel that
            # is still connecting.
            async with asyncio.timeout(self.timeout_s):
                ready = await self.client.is_model_ready(triton_model, client_timeout=self.timeout_s)
        except Exception:  # noqa: BLE001 - no answer in time, refused, unreachable: all a miss
            ready = False
        self.misses = 0 if ready else self.misses + 1
        return self.misses < self.misses_allowed

"""A worker moving to another model of its Triton repository — a role change that the planner's
`triton` connector asks for through the registry — without failing a request:

1. it registers as draining: routers send it nothing new once they have re-read the registry;
2. it waits until its engine model has answered every request it took (the model's in-flight
   gauge on Triton's metrics endpoint);
3. it unloads that model and loads the other through Triton's repository API;
4. it registers again, with the new model's role.

If the new model does not load, the old one is loaded back (if that fails too, the worker
exits); if the drain does not finish in time, the worker stays as it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kvmesh.repo.interface import IN_FLIGHT_METRIC
from kvmesh.v1 import worker_pb2

log = logging.getLogger("kvmesh.worker")

# NIXL's side channel is set up when Triton starts, for prefill and decode workers only.
CHANGEABLE = (worker_pb2.ROLE_PREFILL, worker_pb2.ROLE_DECODE)


class RoleChangeRefused(ValueError):
    """The requested model cannot replace the running one on this worker."""


class NothingLoaded(RuntimeError):
    """The new model failed and the old one did not load back: the worker has nothing to serve."""


async def in_flight(metrics_url: str, triton_model: str) -> int:
    """The engine model's in-flight requests, from Triton's Prometheus endpoint."""
    async with httpx.AsyncClient(timeout=2) as client:
        text = (await client.get(metrics_url)).text
    for family in text_string_to_metric_families(text):
        if family.name == IN_FLIGHT_METRIC:
            for sample in family.samples:
                if sample.labels.get("model") == triton_model:
                    return int(sample.value)
    raise LookupError(f"{triton_model} reports no {IN_FLIGHT_METRIC} on {metrics_url}")


async def wait_drained(metrics_url: str, triton_model: str, settle_s: float, timeout_s: float) -> bool:
    """True once the model has nothing in flight, counted from `settle_s` on: requests routed
    before the routers saw the drain may still be on their way."""
    await asyncio.sleep(settle_s)
    deadline = time.monotonic() + timeout_s
    while (left := await in_flight(metrics_url, triton_model)) > 0:
        if time.monotonic() > deadline:
            log.warning("%s still has %d requests in flight after %.0fs", triton_model, left, timeout_s)
            return False
        await asyncio.sleep(0.1)
    return True


def check(current: worker_pb2.WorkerRecord, new_role: worker_pb2.Role.ValueType) -> None:
    if current.role not in CHANGEABLE or new_role not in CHANGEABLE:
        names = (worker_pb2.Role.Name(current.role), worker_pb2.Role.Name(new_role))
        raise RoleChangeRefused(f"only prefill and decode workers change roles, not {names[0]} → {names[1]}")


async def swap(
    unload: Callable[[str], Awaitable[None]],
    load: Callable[[str], Awaitable[worker_pb2.WorkerRecord]],
    old: str,
    new: str,
) -> worker_pb2.WorkerRecord:
    """Unloads `old`, loads `new`; on failure loads `old` back and re-raises (NothingLoaded if
    that fails too)."""
    await unload(old)
    try:
        return await load(new)
    except Exception as e:
        log.exception("loading %s failed; loading %s back", new, old)
        try:
            await load(old)
        except Exception as back:
            raise NothingLoaded(f"neither {new} nor {old} loads: {back}") from e
        raise

"""A worker moving to another model of its Triton repository — a role change that the planner's
`triton` connector asks for through the registry — without failing a request:

1. it registers as draining: routers send it nothing new once they have re-read the registry,
   and it waits a settle time for requests routed before that, then until the routers' shared
   load counts no request on it (a disaggregated request's decode phase arrives only once its
   prefill elsewhere is done);
2. it unloads its model through Triton's repository API: Triton takes no new request for it and
   keeps the instance until every request in flight has been answered; the worker waits until the
   instance's stub processes are gone;
3. it loads the other model and registers again, with that model's role.

If the new model does not load, the old one is loaded back (if that fails too, the worker
exits).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from kvmesh.registry import CHANGEABLE_ROLES
from kvmesh.v1 import worker_pb2
from services.worker import model_config
from services.worker.registration import Registration

log = logging.getLogger("kvmesh.worker")


class RoleChangeRefused(ValueError):
    """The requested model cannot replace the running one on this worker."""


class NothingLoaded(RuntimeError):
    """The new model failed and the old one did not load back: the worker has nothing to serve."""


def check(current: worker_pb2.WorkerRecord, new_role: worker_pb2.Role.ValueType) -> None:
    if current.role not in CHANGEABLE_ROLES or new_role not in CHANGEABLE_ROLES:
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


async def change(
    registration: Registration,
    triton_model: str,
    unload: Callable[[str], Awaitable[None]],
    load: Callable[[str], Awaitable[worker_pb2.WorkerRecord]],
) -> None:
    """The steps above; the assignment is done with either way. Refused or failed, the worker
    serves as it was; NothingLoaded goes up (the heartbeat ends the worker: it must not stay
    registered)."""
    old, settings = registration.record, registration.settings
    try:
        check(old, model_config.role(model_config.read(settings.model_repository / triton_model)))
        await registration.drain()
        registration.record = await swap(unload, load, old.triton_model, triton_model)
        role = worker_pb2.Role.Name(registration.record.role)
        log.info("worker %s now runs %s (%s)", registration.worker_id, triton_model, role)
    except NothingLoaded:
        raise
    except Exception as e:  # noqa: BLE001 - refused or failed: the worker serves as it was
        log.error("worker %s: no change to %s: %s", registration.worker_id, triton_model, e)
        registration.record = old
    await registration.register()
    await registration.reg.clear_assignment(registration.worker_id)

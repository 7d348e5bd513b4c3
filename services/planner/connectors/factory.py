"""The one list of connectors (`--connector` name → factory). A factory builds its connector from
the settings and the live worker set; config.ConnectorName names the same choices."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Callable

from kvmesh import registry
from kvmesh.registry import Watcher
from kvmesh.v1 import worker_pb2
from services.planner.config import ConnectorName, PlannerSettings
from services.planner.connectors import Connector, kubernetes
from services.planner.connectors.local import LocalConnector
from services.planner.connectors.triton import TritonConnector


def _records(workers: Watcher) -> Callable[[], dict[str, worker_pb2.WorkerRecord]]:
    def live() -> dict[str, worker_pb2.WorkerRecord]:
        if not workers.reachable:
            raise ConnectionError("registry unreachable")
        return {wid: w.record for wid, w in workers.workers.items()}

    return live


def _local(settings: PlannerSettings, workers: Watcher) -> Connector:
    live = _records(workers)
    return LocalConnector(
        lambda: {wid: record.role for wid, record in live().items()},
        shlex.split(settings.worker_args),
        settings.engine,
        settings.log_dir,
    )


def _triton(settings: PlannerSettings, workers: Watcher) -> Connector:
    assign = _assigner(workers.registry, settings.assignment_ttl_s)
    return TritonConnector(_records(workers), assign, settings.engine, settings.assignment_ttl_s)


def _kubernetes(settings: PlannerSettings, workers: Watcher) -> Connector:
    return kubernetes.connect(settings.namespace)


CONNECTORS: dict[ConnectorName, Callable[[PlannerSettings, Watcher], Connector]] = {
    "local": _local,
    "triton": _triton,
    "kubernetes": _kubernetes,
}


def make(settings: PlannerSettings, workers: Watcher) -> Connector:
    return CONNECTORS[settings.connector](settings, workers)


def _assigner(reg: registry.Registry, ttl_s: float) -> Callable[[str, str], None]:
    """`assign(worker_id, triton_model)` for the connector, which runs on the planning thread:
    the registry's client belongs to the event loop."""
    loop = asyncio.get_running_loop()

    def assign(worker_id: str, triton_model: str) -> None:
        asyncio.run_coroutine_threadsafe(reg.assign(worker_id, triton_model, int(ttl_s * 1000)), loop).result(5)

    return assign

"""Prometheus' file-based service discovery, kept from the registry: every live worker's Triton
metrics (its record's `triton_metrics_address`) and every service's announced /metrics
(kvmesh/announce.py), written as one file_sd JSON file whenever the set changes.

Labels (what dashboards and rules select on): `job` = kvmesh-<kind> (gateway, router, kvindex,
planner, worker), `kvmesh_id` = the service's or worker's id; a worker's also `worker` (its id),
`model` and `role` (aggregated, prefill, decode). Prometheus makes `instance` the address.

`python -m kvmesh.prometheus_sd --out FILE --interval-s S`: its own process under `kvmesh up`
(the supervisor restarts it like any service, and `kvmesh up`'s loop stays a plain poll of its
children). One pipelined read each interval; Prometheus watches the file, so a change is
scraped within an interval plus a scrape. The file is replaced by a rename, never seen half
written; while Redis is away the last one stays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from kvmesh import announce, registry
from kvmesh.settings import CommonSettings, load
from kvmesh.tls import MutualTls
from kvmesh.v1 import worker_pb2

log = logging.getLogger("kvmesh.prometheus_sd")


class SdSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="KVMESH_PROMETHEUS_SD_", cli_prog_name="kvmesh.prometheus_sd")

    out: Path = Field(description="the file_sd JSON file to keep")
    interval_s: float = Field(5.0, ge=0.1, description="how often the registry is read")


def role_name(role: int) -> str:
    return worker_pb2.Role.Name(role).removeprefix("ROLE_").lower()


def target_groups(workers: Iterable[registry.LiveWorker], services: Iterable[announce.Endpoint]) -> list[dict]:
    """One group per target, sorted, so that the same fleet writes the same bytes."""
    groups = []
    for service in services:
        labels = {"job": f"kvmesh-{service.kind}", "kvmesh_id": service.id}
        if service.scheme != "http":
            labels["__scheme__"] = service.scheme
        groups.append({"targets": [service.address], "labels": labels})
    for worker in workers:
        record = worker.record
        if not record.triton_metrics_address:  # a worker of an older version
            continue
        labels = {"job": "kvmesh-worker", "kvmesh_id": record.id, "worker": record.id, "model": record.model,
                  "role": role_name(record.role)}  # fmt: skip
        groups.append({"targets": [record.triton_metrics_address], "labels": labels})
    return sorted(groups, key=lambda g: (g["labels"]["job"], g["targets"][0], g["labels"]["kvmesh_id"]))


def write_atomically(path: Path, groups: list[dict]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(groups, indent=1) + "\n")
    os.replace(temporary, path)


async def keep(client, out: Path, interval_s: float) -> None:
    """Reads the registry every `interval_s` and rewrites `out` when its targets changed."""
    reg = registry.Registry(client)
    known: dict[str, registry.LiveWorker] = {}
    written: list[dict] | None = None
    reachable = True
    while True:
        try:
            snapshot = await reg.read(known)
            services = await announce.read(client)
        except Exception as e:  # noqa: BLE001 - Redis away: Prometheus keeps the last targets
            if reachable:
                log.warning("registry unreachable; the targets stay as last written: %s", e)
            reachable = False
        else:
            reachable = True
            known = {w.record.id: w for w in snapshot.workers}
            groups = target_groups(snapshot.workers, services)
            if groups != written:
                write_atomically(out, groups)
                log.info("%d targets: %s", len(groups), ", ".join(g["labels"]["kvmesh_id"] for g in groups))
                written = groups
        await asyncio.sleep(interval_s)


async def run(settings: SdSettings) -> None:
    client = registry.connect(settings.redis_url, tls=MutualTls.of(settings))
    try:
        await keep(client, settings.out, settings.interval_s)
    finally:
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(run(load(SdSettings)))

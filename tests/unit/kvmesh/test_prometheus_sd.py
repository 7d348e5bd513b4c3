import asyncio
import json
import subprocess

import pytest

from kvmesh import announce, prometheus_sd, registry
from kvmesh.cli import prometheus
from kvmesh.v1 import worker_pb2


def worker(worker_id: str, role: int, metrics: str = "127.0.0.1:8002") -> worker_pb2.WorkerRecord:
    return worker_pb2.WorkerRecord(
        id=worker_id, model="smollm2", role=role, triton_grpc_address="127.0.0.1:8001", triton_metrics_address=metrics
    )


def test_targets_carry_the_agreed_labels():
    workers = [
        registry.LiveWorker(worker("w-b", worker_pb2.ROLE_DECODE, "127.0.0.1:8102"), 0),
        registry.LiveWorker(worker("w-a", worker_pb2.ROLE_PREFILL, "127.0.0.1:8002"), 0),
        registry.LiveWorker(worker("w-old", worker_pb2.ROLE_AGGREGATED, metrics=""), 0),  # names no metrics
    ]
    services = [
        announce.endpoint("router", "127.0.0.1", 9101),
        announce.endpoint("gateway", "127.0.0.1", 8080, "https"),
    ]
    assert prometheus_sd.target_groups(workers, services) == [
        {"targets": ["127.0.0.1:8080"], "labels": {"job": "kvmesh-gateway", "kvmesh_id": "gateway@127.0.0.1:8080",
                                                   "__scheme__": "https"}},
        {"targets": ["127.0.0.1:9101"], "labels": {"job": "kvmesh-router", "kvmesh_id": "router@127.0.0.1:9101"}},
        {"targets": ["127.0.0.1:8002"], "labels": {"job": "kvmesh-worker", "kvmesh_id": "w-a", "worker": "w-a",
                                                   "model": "smollm2", "role": "prefill"}},
        {"targets": ["127.0.0.1:8102"], "labels": {"job": "kvmesh-worker", "kvmesh_id": "w-b", "worker": "w-b",
                                                   "model": "smollm2", "role": "decode"}},
    ]  # fmt: skip


async def test_the_file_follows_the_registry(redis_url, tmp_path):
    client = registry.connect(redis_url)
    reg = registry.Registry(client)
    out = tmp_path / "targets.json"
    keeping = asyncio.create_task(prometheus_sd.keep(client, out, interval_s=0.05))

    async def ids_written() -> set[str]:
        await asyncio.sleep(0.2)
        return {g["labels"]["kvmesh_id"] for g in json.loads(out.read_text())}

    try:
        await reg.register(worker("w-1", worker_pb2.ROLE_AGGREGATED), lease_ms=5000)
        await announce.announce(client, announce.endpoint("kvindex", "127.0.0.1", 9102))
        assert await ids_written() == {"w-1", "kvindex@127.0.0.1:9102"}
        await reg.deregister("w-1")
        assert await ids_written() == {"kvindex@127.0.0.1:9102"}
        assert [p.name for p in tmp_path.iterdir()] == ["targets.json"]  # the temporary file was renamed
    finally:
        keeping.cancel()
        await asyncio.gather(keeping, return_exceptions=True)
        await client.aclose()


def test_the_generated_config_is_valid_for_the_prometheus_we_run(tmp_path):
    binary = prometheus.binary()
    if binary is None:
        pytest.fail("no prometheus: scripts/setup.sh unpacks Debian's into build/prometheus")
    config_file, targets = prometheus.prepare(tmp_path, interval_s=1.0)
    assert json.loads(targets.read_text()) == []
    checked = subprocess.run(
        [str(binary.with_name("promtool")), "check", "config", str(config_file)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (prometheus.RULES.is_file()) == ("rule_files" in prometheus.config(targets, 1.0))

"""The worker's role-change steps with fakes: refusing what NIXL's start-up set-up cannot follow,
loading the old model back, and saying so when neither loads."""

import asyncio

import pytest

from kvmesh.v1 import worker_pb2
from services.worker import role_change


def test_only_prefill_and_decode_workers_change_roles():
    record = worker_pb2.WorkerRecord(role=worker_pb2.ROLE_DECODE)
    role_change.check(record, worker_pb2.ROLE_PREFILL)
    with pytest.raises(role_change.RoleChangeRefused, match="ROLE_AGGREGATED"):
        role_change.check(record, worker_pb2.ROLE_AGGREGATED)


def test_a_model_that_fails_to_load_puts_the_old_one_back():
    calls = []

    async def unload(name):
        calls.append(("unload", name))

    async def load(name):
        calls.append(("load", name))
        if name == "sim_prefill":
            raise RuntimeError("no such model")
        return worker_pb2.WorkerRecord(triton_model=name)

    with pytest.raises(RuntimeError, match="no such model"):
        asyncio.run(role_change.swap(unload, load, "sim_decode", "sim_prefill"))
    assert calls == [("unload", "sim_decode"), ("load", "sim_prefill"), ("load", "sim_decode")]


def test_a_worker_left_with_no_model_says_so():
    async def unload(name):
        pass

    async def load(name):
        raise RuntimeError(f"{name} is broken")

    with pytest.raises(role_change.NothingLoaded, match="neither sim_prefill nor sim_decode"):
        asyncio.run(role_change.swap(unload, load, "sim_decode", "sim_prefill"))

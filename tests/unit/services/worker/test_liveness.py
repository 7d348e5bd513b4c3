"""The heartbeat's engine check with a fake Triton: a Triton that stops answering (hung, not dead)
is registered unresponsive after MISSES heartbeats in a row, one slow answer is not enough, and the
record is responsive again at its first answer; a role change in progress is not asked about."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from kvmesh.v1 import worker_pb2
from services.worker.config import WorkerSettings
from services.worker.liveness import EngineLiveness
from services.worker.registration import Registration


class FakeTriton:
    """Answers readiness as `answers` says, one entry per ask (the last repeats): True (ready),
    False (not ready) or None (hangs: no answer within any deadline)."""

    def __init__(self, *answers: bool | None):
        self.answers = list(answers)
        self.asked: list[str] = []

    async def is_model_ready(self, model_name, model_version="", headers=None, client_timeout=None):
        self.asked.append(model_name)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer is None:
            await asyncio.Event().wait()
        return answer


@dataclass
class FakeRegistry:
    """Keeps each registration; a heartbeat after `beats` ends the fake Triton process."""

    process: FakeProcess
    beats: int
    registered: list[worker_pb2.WorkerRecord] = field(default_factory=list)

    async def register(self, record, lease_ms):
        self.registered.append(record)
        if len(self.registered) >= self.beats:
            self.process.returncode = 0

    async def assignment(self, worker_id):
        return None


class FakeProcess:
    returncode: int | None = None

    def poll(self):
        return self.returncode


async def heartbeats(triton: FakeTriton, beats: int) -> list[bool]:
    """The `unresponsive` flag of each record the heartbeat registered, over `beats` beats."""
    process = FakeProcess()
    reg = FakeRegistry(process, beats)
    registration = Registration(
        WorkerSettings(lease_ms=500), reg, "w-1", worker_pb2.WorkerRecord(id="w-1", triton_model="sim")
    )

    async def change_to(model):
        raise AssertionError("no role change was asked for")

    try:
        await registration.heartbeat(process, change_to, EngineLiveness(triton, timeout_s=0.02))
    except SystemExit:  # the fake Triton "exited" after `beats`
        pass
    assert set(triton.asked) == {"sim"}
    return [r.unresponsive for r in reg.registered]


async def test_a_hung_triton_is_unresponsive_after_two_misses_then_responsive_at_its_first_answer():
    flags = await heartbeats(FakeTriton(True, None, None, None, True, True), beats=6)
    assert flags == [False, False, True, True, False, False]


async def test_one_slow_or_not_ready_answer_between_answers_is_not_a_hang():
    assert await heartbeats(FakeTriton(True, None, True, False, True), beats=5) == [False] * 5


async def test_a_refused_call_is_a_miss():
    class Refusing(FakeTriton):
        async def is_model_ready(self, model_name, model_version="", headers=None, client_timeout=None):
            self.asked.append(model_name)
            raise ConnectionError("unreachable")

    engine = EngineLiveness(Refusing(), timeout_s=0.02)
    assert [await engine.responsive("sim") for _ in range(3)] == [True, False, False]
    assert engine.misses == 3


async def test_a_role_change_in_progress_is_not_asked_about():
    """The change unloads the model: readiness would miss, and the record is draining anyway."""
    process = FakeProcess()
    reg = FakeRegistry(process, beats=4)
    record = worker_pb2.WorkerRecord(id="w-1", triton_model="sim_decode", role=worker_pb2.ROLE_DECODE)
    registration = Registration(WorkerSettings(lease_ms=500), reg, "w-1", record)
    triton = FakeTriton(True)
    done = asyncio.Event()  # the change runs until the heartbeats are over

    async def assignment(worker_id):
        return "sim_prefill"

    async def change_to(model):
        await done.wait()

    reg.assignment = assignment
    try:
        await registration.heartbeat(process, change_to, EngineLiveness(triton, timeout_s=0.02))
    except SystemExit:
        pass
    done.set()
    await asyncio.sleep(0)
    assert len(triton.asked) == 1  # the first beat, before the change began

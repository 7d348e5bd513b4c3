"""The admission queue against a fake mesh of N slots: order (FIFO within a key, priorities, no
overtaking), fairness by tokens between keys, its bounds and their errors, cancellation, and the
retry tick that finds slots freed elsewhere."""

from __future__ import annotations

import asyncio
import itertools
import statistics

import pytest
from prometheus_client import REGISTRY

from kvmesh.errors import AtCapacity, ResourceExhausted, Unavailable
from services.gateway.admission import Admission


class FakeMesh:
    """`slots` requests at once; a request admitted holds its slot for `cost × token_s` seconds,
    then frees it and tells the admission queue, as the gateway does when a request ends."""

    def __init__(self, admission: Admission, slots: int, token_s: float = 0.0):
        self.admission, self.slots, self.token_s = admission, slots, token_s
        self.busy = 0
        self.admitted: list[str] = []
        self.tokens: dict[str, int] = {}
        self.holding: set[asyncio.Task] = set()

    def attempt(self, name: str, cost: int = 1):
        async def go() -> str:
            if self.busy >= self.slots:
                raise AtCapacity("every worker is full")
            self.busy += 1
            self.admitted.append(name)
            key = name.split("/")[0]
            self.tokens[key] = self.tokens.get(key, 0) + cost
            if self.token_s:
                task = asyncio.create_task(self._hold(cost * self.token_s))
                self.holding.add(task)
                task.add_done_callback(self.holding.discard)
            return name

        return go

    async def _hold(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.end()

    def end(self) -> None:
        self.busy -= 1
        self.admission.released()


def gauge(priority: str) -> float:
    return REGISTRY.get_sample_value("kvmesh_gateway_queued", {"priority": priority})


def rejections(priority: str, reason: str) -> float:
    return REGISTRY.get_sample_value(
        "kvmesh_gateway_queue_rejections_total", {"priority": priority, "reason": reason}
    ) or 0.0  # fmt: skip


async def queue(admission: Admission, mesh: FakeMesh, names: list[str], priority: str = "normal") -> list:
    """Starts a request per name (key/label) in order; returns once each has queued."""
    tasks = []
    for name in names:
        before = admission.queued()
        tasks.append(asyncio.create_task(admission.run(name.split("/")[0], priority, 1, mesh.attempt(name))))
        while admission.queued() == before:
            await asyncio.sleep(0)
    return tasks


async def serve_one_by_one(mesh: FakeMesh, count: int) -> None:
    """Frees a slot `count` times, each once the last freed one is taken again."""
    for _ in range(count):
        taken = len(mesh.admitted)
        mesh.end()
        while len(mesh.admitted) == taken:
            await asyncio.sleep(0.001)


async def test_an_idle_mesh_admits_at_once_and_reports_no_queue_time():
    admission = Admission(max_queued=4, timeout_s=1)
    mesh = FakeMesh(admission, slots=1)
    assert await admission.run("a", "normal", 1, mesh.attempt("a/1")) == ("a/1", 0.0)


async def test_fifo_within_a_key_and_keys_interleaved():
    admission = Admission(max_queued=100, timeout_s=5, retry_interval_s=10)
    mesh = FakeMesh(admission, slots=1)
    await mesh.attempt("x")()  # the mesh is full
    names = ["a/1", "a/2", "b/1", "a/3", "b/2", "b/3", "a/4"]
    tasks = await queue(admission, mesh, names)
    await serve_one_by_one(mesh, len(names))
    served = mesh.admitted[1:]
    assert [n for n in served if n.startswith("a/")] == ["a/1", "a/2", "a/3", "a/4"]
    assert [n for n in served if n.startswith("b/")] == ["b/1", "b/2", "b/3"]
    # Equal costs: the keys take turns while both have requests waiting.
    assert served[:6] == ["a/1", "b/1", "a/2", "b/2", "a/3", "b/3"]
    assert all(waited > 0 for _, waited in await asyncio.gather(*tasks))
    assert admission.queued() == 0


async def test_higher_priority_goes_first_whenever_it_arrived():
    admission = Admission(max_queued=100, timeout_s=5, retry_interval_s=10)
    mesh = FakeMesh(admission, slots=1)
    await mesh.attempt("x")()
    tasks = await queue(admission, mesh, ["low/1", "low/2"], "low")
    tasks += await queue(admission, mesh, ["normal/1"], "normal")
    tasks += await queue(admission, mesh, ["high/1", "high/2"], "high")
    assert (admission.queued("high"), admission.queued("normal"), admission.queued("low")) == (2, 1, 2)
    await serve_one_by_one(mesh, 5)
    assert mesh.admitted[1:] == ["high/1", "high/2", "normal/1", "low/1", "low/2"]
    await asyncio.gather(*tasks)


async def test_while_anything_is_queued_an_arrival_queues_behind_it():
    # A long tick: only released() hands out turns here.
    admission = Admission(max_queued=100, timeout_s=5, retry_interval_s=10)
    mesh = FakeMesh(admission, slots=1)
    await mesh.attempt("x")()
    first = await queue(admission, mesh, ["a/1"])
    mesh.busy = 0  # a slot freed that this gateway was not told of
    late = await queue(admission, mesh, ["b/1"])  # its attempt would have succeeded
    assert mesh.admitted == ["x"]
    admission.released()
    assert (await first[0])[0] == "a/1"
    mesh.end()
    assert (await late[0])[0] == "b/1"


async def test_keys_get_equal_tokens_when_both_are_backlogged_whatever_their_request_rates():
    """Heavy offers 10× light's requests; both more than half the mesh: each gets 40–60% of the
    tokens served, light's larger requests fewer times."""
    admission = Admission(max_queued=100_000, timeout_s=30)
    # 2 slots, 0.5 ms per token: 4000 tokens/s. Light alone offers 3000/s, heavy 24000/s.
    mesh = FakeMesh(admission, slots=2, token_s=0.0005)
    offered: list[asyncio.Task] = []

    async def offer(key: str, per_tick: int, cost: int) -> None:
        for i in itertools.count():
            offered.extend(
                asyncio.create_task(admission.run(key, "normal", cost, mesh.attempt(f"{key}/{i}.{j}", cost)))
                for j in range(per_tick)
            )
            await asyncio.sleep(0.01)

    producers = [asyncio.create_task(offer("heavy", 20, 12)), asyncio.create_task(offer("light", 2, 15))]
    await asyncio.sleep(0.3)  # both build a backlog
    start = dict(mesh.tokens)
    await asyncio.sleep(1.0)
    served = {k: mesh.tokens[k] - start.get(k, 0) for k in ("heavy", "light")}
    backlog = admission.queued()
    share = served["light"] / (served["light"] + served["heavy"])
    for task in producers + offered:
        task.cancel()
    await asyncio.gather(*producers, *offered, return_exceptions=True)
    assert backlog > 100, "the mesh was not saturated"
    assert sum(served.values()) > 2000, served
    assert 0.4 <= share <= 0.6, served
    await asyncio.gather(*mesh.holding, return_exceptions=True)
    assert admission.queued() == 0 and gauge("normal") == 0


async def test_a_light_key_waits_about_one_slot_turn_behind_a_long_backlog():
    hold = 0.02
    admission = Admission(max_queued=1000, timeout_s=30)
    mesh = FakeMesh(admission, slots=1, token_s=hold)
    await mesh.attempt("x")()
    mesh.end()
    heavy = [asyncio.create_task(admission.run("heavy", "normal", 1, mesh.attempt(f"heavy/{i}"))) for i in range(200)]
    light_waits, backlog = [], []
    for i in range(8):
        await asyncio.sleep(0.037)  # not in step with the slot's turns
        backlog.append(admission.queued())
        _, waited = await admission.run("light", "normal", 1, mesh.attempt(f"light/{i}"))
        light_waits.append(waited)
    for task in heavy:
        task.cancel()
    await asyncio.gather(*heavy, *mesh.holding, return_exceptions=True)
    # A free slot comes within one turn (hold); each light request takes the next one.
    assert statistics.median(light_waits) < 1.5 * hold, light_waits
    assert max(light_waits) < 3 * hold, light_waits
    assert min(backlog) > 150, "heavy's backlog was not long"
    assert admission.queued() == 0 and gauge("normal") == 0


async def test_a_full_queue_refuses_naming_max_queued_per_priority():
    admission = Admission(max_queued=2, timeout_s=5, retry_interval_s=10)
    mesh = FakeMesh(admission, slots=1)
    await mesh.attempt("x")()
    tasks = await queue(admission, mesh, ["a/1", "b/1"])
    before = rejections("normal", "full")
    with pytest.raises(ResourceExhausted, match="--max-queued") as refused:
        await admission.run("c", "normal", 1, mesh.attempt("c/1"))
    assert refused.value.headers["Retry-After"] == "1"
    assert rejections("normal", "full") == before + 1
    assert admission.queued() == 2
    tasks += await queue(admission, mesh, ["d/1"], "high")  # another priority's queue has room
    await serve_one_by_one(mesh, 3)
    assert mesh.admitted[1:] == ["d/1", "a/1", "b/1"]
    await asyncio.gather(*tasks)


async def test_a_wait_over_the_timeout_is_refused_naming_queue_timeout_s():
    admission = Admission(max_queued=10, timeout_s=0.1, retry_interval_s=0.01)
    mesh = FakeMesh(admission, slots=1)
    await mesh.attempt("x")()  # never freed
    before = rejections("low", "timeout")
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(ResourceExhausted, match="--queue-timeout-s") as refused:
        await admission.run("a", "low", 1, mesh.attempt("a/1"))
    assert 0.1 <= loop.time() - start < 0.5
    assert refused.value.headers["Retry-After"] == "1"
    assert rejections("low", "timeout") == before + 1
    assert admission.queued() == 0 and gauge("low") == 0


async def test_cancelled_waiters_leave_no_residue_and_the_rest_are_served():
    admission = Admission(max_queued=10, timeout_s=5, retry_interval_s=10)
    mesh = FakeMesh(admission, slots=1)
    await mesh.attempt("x")()
    tasks = await queue(admission, mesh, ["a/1", "a/2", "b/1", "a/3"])
    assert gauge("normal") == 4
    for i in (0, 2):  # the head and one in the middle of a key's line
        tasks[i].cancel()
    await asyncio.gather(tasks[0], tasks[2], return_exceptions=True)
    assert admission.queued() == 2 and gauge("normal") == 2
    await serve_one_by_one(mesh, 2)
    assert mesh.admitted[1:] == ["a/2", "a/3"]
    await asyncio.gather(tasks[1], tasks[3])
    assert admission.queued() == 0 and gauge("normal") == 0


async def test_a_waiter_cancelled_during_its_attempt_passes_the_turn_on():
    admission = Admission(max_queued=10, timeout_s=5, retry_interval_s=10)
    mesh = FakeMesh(admission, slots=1)
    await mesh.attempt("x")()
    stuck = asyncio.Event()
    tries = 0

    async def hangs_once_queued():
        nonlocal tries
        tries += 1
        if tries == 1:
            raise AtCapacity("full")
        stuck.set()
        await asyncio.Event().wait()  # a Route that never answers

    hanging = asyncio.create_task(admission.run("a", "normal", 1, hangs_once_queued))
    while not admission.queued():
        await asyncio.sleep(0)
    after = await queue(admission, mesh, ["b/1"])
    admission.released()
    await stuck.wait()
    hanging.cancel()
    mesh.end()
    assert (await after[0])[0] == "b/1"
    assert admission.queued() == 0 and gauge("normal") == 0


async def test_other_errors_reach_their_caller_and_the_queue_moves_on():
    admission = Admission(max_queued=10, timeout_s=5, retry_interval_s=10)
    mesh = FakeMesh(admission, slots=1)
    await mesh.attempt("x")()
    tries = 0

    async def fails_once_queued():
        nonlocal tries
        tries += 1
        raise AtCapacity("full") if tries == 1 else Unavailable("no live worker")

    failing = asyncio.create_task(admission.run("a", "normal", 1, fails_once_queued))
    while not admission.queued():
        await asyncio.sleep(0)
    after = await queue(admission, mesh, ["b/1"])
    mesh.end()
    with pytest.raises(Unavailable, match="no live worker"):
        await failing
    assert (await after[0])[0] == "b/1"
    assert admission.queued() == 0


async def test_the_retry_tick_finds_a_slot_freed_elsewhere():
    admission = Admission(max_queued=10, timeout_s=5, retry_interval_s=0.02)
    mesh = FakeMesh(admission, slots=1)
    await mesh.attempt("x")()
    waiting = await queue(admission, mesh, ["a/1"])
    await asyncio.sleep(0.1)
    assert not waiting[0].done()  # re-tried on each tick, still full
    mesh.busy = 0  # another gateway's request ended: no released() here
    name, waited = await asyncio.wait_for(waiting[0], 0.5)
    assert name == "a/1" and waited >= 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_queued": -1, "timeout_s": 1}, "max_queued"),
        ({"max_queued": 1, "timeout_s": 0}, "timeout_s"),
        ({"max_queued": 1, "timeout_s": 1, "retry_interval_s": 0}, "retry_interval_s"),
    ],
)
def test_bad_settings_are_refused_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Admission(**kwargs)


async def test_a_bad_priority_or_cost_is_refused_naming_it():
    admission = Admission(max_queued=1, timeout_s=1)
    mesh = FakeMesh(admission, slots=1)
    with pytest.raises(ValueError, match="priority 'urgent'"):
        await admission.run("a", "urgent", 1, mesh.attempt("a/1"))
    with pytest.raises(ValueError, match="cost"):
        await admission.run("a", "normal", -1, mesh.attempt("a/1"))


async def test_a_head_cancelled_just_before_its_turn_does_not_stop_the_queue():
    """A waiter cancelled while the queue serves (its turn future cancelled, its `finally` not yet
    run) must be passed over, not handed a turn: the queue keeps serving the rest."""
    admission = Admission(max_queued=8, timeout_s=5, retry_interval_s=0.01)
    full = True

    async def attempt():
        if full:
            raise AtCapacity("full")
        return "ok"

    first = asyncio.create_task(admission.run("a", "normal", 1, attempt))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(admission.run("b", "normal", 1, attempt))
    await asyncio.sleep(0.02)
    first.cancel()
    full = False
    admission.released()  # the server wakes in the same turn the cancelled head is still queued
    assert await asyncio.wait_for(second, 2) == ("ok", pytest.approx(0.04, abs=0.5))
    assert admission.queued() == 0

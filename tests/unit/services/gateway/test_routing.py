"""services/gateway/routing.py: in process below the threshold of requests in flight, the router
service from it on; each request's bookkeeping goes to whichever decided it."""

from __future__ import annotations

import asyncio

import pytest

from kvmesh.errors import AtCapacity
from kvmesh.v1 import router_pb2, worker_pb2
from services.gateway.routing import Routing


class Decider:
    """What both a RouterClient and a Router are asked, recorded; `gate` holds Routes open."""

    def __init__(self, worker_id: str):
        self.worker_id = worker_id
        self.calls: list[tuple[str, str]] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def route(self, request: router_pb2.RouteRequest) -> router_pb2.RouteResponse:
        self.calls.append(("route", request.request_id))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return router_pb2.RouteResponse(worker=worker_pb2.WorkerRecord(id=self.worker_id))

    def prefilled(self, request_id: str) -> None:
        self.calls.append(("prefilled", request_id))

    mark_prefilled = prefilled

    def released(self, request_id: str, cached_tokens: int | None = None) -> None:
        self.calls.append(("released", request_id))

    release = released

    async def close(self) -> None:
        pass


def routing(below: int) -> tuple[Routing, Decider, Decider]:
    remote, local = Decider("from-router"), Decider("in-process")
    return Routing(remote, local, below), remote, local


async def route(r: Routing, request_id: str) -> str:
    return (await r.route("m", request_id, 4, [], 0, {})).worker.id


async def test_below_the_threshold_the_gateway_decides_and_keeps_the_bookkeeping():
    r, remote, local = routing(below=2)
    assert [await route(r, "a"), await route(r, "b"), await route(r, "c")] == [
        "in-process",
        "in-process",
        "from-router",
    ]
    for request_id in "abc":
        r.mark_prefilled(request_id)
        r.release(request_id)
    assert local.calls == [("route", "a"), ("route", "b")] + [
        (k, rid) for rid in "ab" for k in ("prefilled", "released")
    ]
    assert remote.calls == [("route", "c"), ("prefilled", "c"), ("released", "c")]
    # Released: in process again.
    assert await route(r, "d") == "in-process"


async def test_routes_still_deciding_count_as_in_flight():
    r, remote, local = routing(below=1)
    local.gate = asyncio.Event()
    first = asyncio.create_task(route(r, "a"))
    await asyncio.sleep(0)
    assert await route(r, "b") == "from-router"  # "a" is still being decided in process
    local.gate.set()
    assert await first == "in-process"


async def test_a_failed_route_is_not_in_flight_and_its_error_reaches_the_caller():
    r, _, local = routing(below=1)
    local.fail = AtCapacity("every worker serving 'm' is at capacity; retry later")
    with pytest.raises(AtCapacity):
        await route(r, "a")
    local.fail = None
    assert await route(r, "b") == "in-process"


@pytest.mark.parametrize("below", [0, 3])
async def test_off_or_without_a_local_router_the_router_service_decides(below):
    remote = Decider("from-router")
    r = Routing(remote, None, below) if below else Routing(remote, Decider("in-process"), 0)
    assert [await route(r, rid) for rid in "ab"] == ["from-router", "from-router"]
    r.release("a")
    assert remote.calls[-1] == ("released", "a")


async def test_an_unknown_request_is_released_at_the_router_service():
    # A request whose Route never answered: the router service forgets ids it does not know.
    r, remote, local = routing(below=2)
    r.release("never-routed")
    assert remote.calls == [("released", "never-routed")] and not local.calls

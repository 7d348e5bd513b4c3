"""services/gateway/routing.py: the router's settings first, then in process below the threshold of
requests in flight and the router service from it on; each request's bookkeeping goes to whichever
decided it."""

from __future__ import annotations

import asyncio

import pytest

from kvmesh.errors import AtCapacity
from kvmesh.routing.config import RoutingConfig
from kvmesh.v1 import router_pb2, worker_pb2
from services.gateway.routing import Routing

DYNAMO = RoutingConfig(policy="dynamo", disagg_threshold_tokens=7).to_proto()


class Decider:
    """What both a RouterClient and a Router are asked, recorded; `gate` holds Routes open."""

    def __init__(self, worker_id: str):
        self.worker_id = worker_id
        self.calls: list[tuple[str, str]] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.on_settings = None

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


class Built:
    """The local routers built, with the config each was built from."""

    def __init__(self):
        self.configs: list[RoutingConfig] = []
        self.router = Decider("in-process")
        self.stopped = False

    async def __call__(self, config: RoutingConfig):
        self.configs.append(config)

        async def stop():
            self.stopped = True

        return self.router, stop


def remote_of(remote: Decider):
    def make(on_settings):
        remote.on_settings = on_settings
        return remote

    return make


async def routing(below: int) -> tuple[Routing, Decider, Decider]:
    """Routing with the router's settings adopted (as its first session tells them)."""
    remote, built = Decider("from-router"), Built()
    r = Routing(remote_of(remote), built, below)
    remote.on_settings(DYNAMO)
    await asyncio.sleep(0)  # the local router is built
    return r, remote, built.router


async def route(r: Routing, request_id: str) -> str:
    return (await r.route("m", request_id, 4, [], 0, {})).worker.id


async def test_the_router_decides_until_its_settings_came_then_a_router_of_those_is_built():
    remote, built = Decider("from-router"), Built()
    r = Routing(remote_of(remote), built, 1)
    assert await route(r, "a") == "from-router"  # no settings yet
    r.release("a")
    remote.on_settings(DYNAMO)
    await asyncio.sleep(0)
    assert built.configs == [RoutingConfig(policy="dynamo", disagg_threshold_tokens=7)]
    assert await route(r, "b") == "in-process"
    await r.close()
    assert built.stopped


async def test_below_the_threshold_the_gateway_decides_and_keeps_the_bookkeeping():
    r, remote, local = await routing(below=2)
    deciders = [await route(r, request_id) for request_id in "abc"]
    assert deciders == ["in-process", "in-process", "from-router"]
    for request_id in "abc":
        r.mark_prefilled(request_id)
        r.release(request_id)
    bookkeeping = [(kind, rid) for rid in "ab" for kind in ("prefilled", "released")]
    assert local.calls == [("route", "a"), ("route", "b"), *bookkeeping]
    assert remote.calls == [("route", "c"), ("prefilled", "c"), ("released", "c")]
    # Released: in process again.
    assert await route(r, "d") == "in-process"


async def test_routes_still_deciding_count_as_in_flight():
    r, _, local = await routing(below=1)
    local.gate = asyncio.Event()
    first = asyncio.create_task(route(r, "a"))
    await asyncio.sleep(0)
    assert await route(r, "b") == "from-router"  # "a" is still being decided in process
    local.gate.set()
    assert await first == "in-process"


async def test_a_failed_route_is_not_in_flight_and_its_error_reaches_the_caller():
    r, _, local = await routing(below=1)
    local.fail = AtCapacity("every worker serving 'm' is at capacity; retry later")
    with pytest.raises(AtCapacity):
        await route(r, "a")
    local.fail = None
    assert await route(r, "b") == "in-process"


async def test_routers_that_decide_differently_turn_routing_in_process_off():
    r, remote, _ = await routing(below=1)
    remote.on_settings(DYNAMO)  # another session, the same settings
    assert await route(r, "a") == "in-process"
    r.release("a")
    remote.on_settings(RoutingConfig(policy="round-robin").to_proto())
    assert await route(r, "b") == "from-router"


async def test_off_the_sessions_do_not_ask_and_the_router_service_decides():
    remote, built = Decider("from-router"), Built()
    r = Routing(remote_of(remote), built, 0)
    assert remote.on_settings is None
    assert [await route(r, rid) for rid in "ab"] == ["from-router", "from-router"]
    r.release("a")
    assert remote.calls[-1] == ("released", "a") and not built.configs


async def test_an_unknown_request_is_released_at_the_router_service():
    # A request whose Route never answered: the router service forgets ids it does not know.
    r, remote, local = await routing(below=2)
    r.release("never-routed")
    assert remote.calls == [("released", "never-routed")] and not local.calls

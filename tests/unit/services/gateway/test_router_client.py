"""The gateway's router client against in-process gRPC routers. One router: answers in any order
reach their own Route, a failed Route is its status' error, bookkeeping arrives in order, a Route
held when it restarts waits for it to come back (until the Route's deadline), a Route that breaks
it fails after breaking it twice. Several: Routes are spread, a router that goes away is left
at once without failing a Route (what it held goes to another), the bookkeeping it may have lost is
sent again elsewhere, and it takes Routes again once it answers health checks."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc
from prometheus_client import REGISTRY

from kvmesh.errors import InvalidArgument, Unavailable
from kvmesh.v1 import router_pb2, router_pb2_grpc, worker_pb2
from services.gateway import router_client, router_session
from services.gateway.config import GatewaySettings
from services.gateway.router_client import RouterClient, route_request


class FakeRouter(router_pb2_grpc.RouterServicer):
    """Paired: answers Routes in pairs, the second first, as one message. Otherwise: each at once,
    but never those in `holds`. "bad" fails alone; "break" ends the stream with an error."""

    def __init__(self, name: str = "router", paired: bool = True):
        self.name = name
        self.paired = paired
        self.holds: set[str] = set()
        self.bookkeeping: list[tuple[str, str]] = []
        self.routed: list[str] = []
        self.sessions = 0
        self.stream_messages = 0
        self.kinds: list[list[str]] = []  # per stream message, what it carried

    async def Session(self, requests, context):
        self.sessions += 1
        held = []
        async for received in requests:
            self.stream_messages += 1
            self.kinds.append([m.WhichOneof("kind") for m in (received, *received.more) if m.WhichOneof("kind")])
            for message in (received, *received.more):
                kind = message.WhichOneof("kind")
                if kind is None:
                    continue  # only carries `more`
                if kind == "settings":
                    yield router_pb2.SessionResponse(settings=router_pb2.RoutingSettings(policy=f"of-{self.name}"))
                    continue
                if kind != "route":
                    self.bookkeeping.append((kind, getattr(message, kind)))
                    continue
                request_id = message.route.request_id
                self.routed.append(request_id)
                if request_id == "break":
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "router going away")
                if request_id in self.holds:
                    continue
                held.append(message.route)
                if self.paired and len(held) < 2 and request_id != "bad":
                    continue
                yield router_pb2.SessionResponse(more=[self.answer(route) for route in reversed(held)])
                held = []

    def answer(self, route: router_pb2.RouteRequest) -> router_pb2.SessionResponse:
        if route.request_id == "bad":
            error = router_pb2.RouteError(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="model: required")
            return router_pb2.SessionResponse(request_id=route.request_id, error=error)
        worker = worker_pb2.WorkerRecord(id=f"worker-for-{route.request_id}@{self.name}")
        return router_pb2.SessionResponse(request_id=route.request_id, route=router_pb2.RouteResponse(worker=worker))


async def serve(fake: FakeRouter, port: int = 0) -> tuple[grpc.aio.Server, int]:
    """`fake` on a port, with the standard health service a probe asks."""
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServicer_to_server(fake, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port


@pytest.fixture
async def router():
    fake = FakeRouter()
    server, port = await serve(fake)
    client = RouterClient(f"127.0.0.1:{port}")
    yield fake, client
    await client.close()
    await server.stop(0)


class Routers:
    """Fake routers (answering at once; two unless named) and a client of all; `stop` and `start` one."""

    def __init__(self, *names: str):
        self.fakes = [FakeRouter(name, paired=False) for name in names or ("a", "b")]
        for fake in self.fakes:
            fake.holds.add("held")
        self.servers: list[grpc.aio.Server] = []
        self.ports: list[int] = []

    async def __aenter__(self) -> Routers:
        for fake in self.fakes:
            server, port = await serve(fake)
            self.servers.append(server)
            self.ports.append(port)
        self.client = RouterClient(",".join(f"127.0.0.1:{p}" for p in self.ports))
        return self

    async def stop(self, i: int) -> None:
        await self.servers[i].stop(0)

    async def start(self, i: int) -> None:
        self.servers[i], _ = await serve(self.fakes[i], self.ports[i])

    def up(self, i: int) -> float:
        return REGISTRY.get_sample_value("kvmesh_gateway_router_up", {"router": f"127.0.0.1:{self.ports[i]}"})

    async def __aexit__(self, *_) -> None:
        await self.client.close()
        for server in self.servers:
            await server.stop(0)


@pytest.fixture
async def routers():
    async with Routers() as r:
        yield r


def route(client: RouterClient, request_id: str):
    return client.route(route_request("m", request_id, 4, [], 0, {"traceparent": "00-ab-cd-01"}))


def route_pair(client: RouterClient, first: str, second: str):
    return asyncio.gather(route(client, first), route(client, second))


async def until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_answers_out_of_order_reach_their_own_routes(router):
    _, client = router
    first, second = await route_pair(client, "r1", "r2")
    assert (first.worker.id, second.worker.id) == ("worker-for-r1@router", "worker-for-r2@router")


async def test_a_failed_route_is_the_error_of_its_status(router):
    _, client = router
    with pytest.raises(InvalidArgument, match="model: required"):
        await route(client, "bad")


async def test_bookkeeping_arrives_in_order_on_the_same_stream(router):
    fake, client = router
    client.mark_prefilled("r1")
    client.release("r1")
    client.release("r2")
    await route_pair(client, "r3", "r4")  # after the bookkeeping, on one stream
    assert fake.bookkeeping == [("prefilled", "r1"), ("released", "r1"), ("released", "r2")]
    assert fake.sessions == 1


async def test_bookkeeping_rides_with_the_next_route_as_one_message(router, monkeypatch):
    monkeypatch.setattr(router_session, "BOOKKEEPING_DELAY_S", 60.0)  # no flush by time in this test
    fake, client = router
    await route_pair(client, "r1", "r2")  # the stream is open
    client.mark_prefilled("r1")
    client.release("r1")
    await asyncio.sleep(0.05)
    assert fake.bookkeeping == []  # waiting for a Route
    await route_pair(client, "r3", "r4")
    assert fake.kinds[-1][:3] == ["prefilled", "released", "route"]


async def test_bookkeeping_with_no_route_to_ride_with_goes_out_after_the_delay(router):
    fake, client = router
    await route_pair(client, "r1", "r2")
    released_at = time.monotonic()
    client.release("r1")
    await until(lambda: fake.bookkeeping == [("released", "r1")])
    assert time.monotonic() - released_at >= router_session.BOOKKEEPING_DELAY_S


async def test_a_release_with_the_engines_cached_tokens_carries_them(router):
    fake, client = router
    client.release("r1", cached_tokens=0)
    client.release("r2")  # none known: the older message, which every router understands
    await route_pair(client, "r3", "r4")
    [(kind, carried), second] = fake.bookkeeping
    assert kind == "release" and carried.request_id == "r1"
    assert carried.HasField("cached_tokens") and carried.cached_tokens.value == 0
    assert second == ("released", "r2")


async def test_what_queues_while_the_stream_is_busy_goes_as_one_message(router):
    fake, client = router
    await route_pair(client, "r1", "r2")  # the stream is open
    sent = fake.stream_messages
    for n in range(20):
        client.release(f"r{n}")
    await route_pair(client, "r3", "r4")
    assert fake.bookkeeping == [("released", f"r{n}") for n in range(20)]
    assert fake.stream_messages - sent < 20  # the writer found most of them queued together


async def test_a_route_that_breaks_the_only_router_fails_after_its_return_and_it_is_used_again(router):
    fake, client = router
    with pytest.raises(Unavailable, match="router going away"):
        await route(client, "break")
    assert fake.routed == ["break", "break"]  # sent again once the probe found it back, not a third time
    # Unhealthy now: the next Route waits for the probe (the router still answers), then goes there.
    first, second = await route_pair(client, "r5", "r6")
    assert (first.worker.id, second.worker.id) == ("worker-for-r5@router", "worker-for-r6@router")
    assert fake.sessions == 3


async def test_a_route_held_by_the_only_router_waits_for_its_restart():
    """`kvmesh up` starts one router: its restart (or drain) must not fail the Routes in flight."""
    async with Routers("a") as routers:
        held = asyncio.ensure_future(route(routers.client, "held"))
        await until(lambda: "held" in routers.fakes[0].routed)
        await routers.stop(0)
        await until(lambda: routers.up(0) == 0)
        await asyncio.sleep(0.2)  # the probe fails meanwhile
        assert not held.done()
        routers.fakes[0].holds.clear()
        await routers.start(0)
        assert (await asyncio.wait_for(held, 3.0)).worker.id == "worker-for-held@a"


async def test_a_route_held_by_the_only_router_fails_at_its_deadline_if_it_stays_away(monkeypatch):
    monkeypatch.setattr(router_client, "ROUTE_TIMEOUT_S", 0.5)
    async with Routers("a") as routers:
        held = asyncio.ensure_future(route(routers.client, "held"))
        await until(lambda: "held" in routers.fakes[0].routed)
        started = time.monotonic()
        await routers.stop(0)
        with pytest.raises(Unavailable, match="router session"):
            await held
        assert 0.2 < time.monotonic() - started < 1.0


async def test_a_route_given_up_on_is_released(router):
    """The caller left (its client went away while it waited for a worker): the router may still
    decide and count the request, so it is told the request is over."""
    fake, client = router
    waiting = asyncio.ensure_future(route(client, "lonely"))  # held for a partner that never comes
    await until(lambda: "lonely" in fake.routed)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(InvalidArgument):  # answered at once; the release went out before it, on one stream
        await route(client, "bad")
    assert ("released", "lonely") in fake.bookkeeping


async def test_routes_are_spread_by_fewest_outstanding_taking_turns(routers):
    client = routers.client
    for n in range(6):
        await route(client, f"r{n}")
    assert [len(f.routed) for f in routers.fakes] == [3, 3]
    held = asyncio.ensure_future(route(client, "held"))  # one router has a Route outstanding
    await until(lambda: any("held" in f.routed for f in routers.fakes))
    holder = next(f for f in routers.fakes if "held" in f.routed)
    for n in range(4):
        await route(client, f"s{n}")
    assert not any(r.startswith("s") for r in holder.routed)
    held.cancel()


async def test_a_route_held_by_a_router_that_dies_is_answered_by_another_within_1_s(routers):
    client = routers.client
    await route(client, "warm-a")
    await route(client, "warm-b")  # a session to each
    held = asyncio.ensure_future(route(client, "held"))
    await until(lambda: any("held" in f.routed for f in routers.fakes))
    dying = next(i for i, f in enumerate(routers.fakes) if "held" in f.routed)
    routers.fakes[1 - dying].holds.clear()  # the other one answers it
    retries = REGISTRY.get_sample_value("kvmesh_gateway_route_retries_total")
    started = time.monotonic()
    await routers.stop(dying)
    assert (await asyncio.wait_for(held, 1.0)).worker.id == f"worker-for-held@{routers.fakes[1 - dying].name}"
    assert time.monotonic() - started < 1.0
    assert routers.up(dying) == 0 and routers.up(1 - dying) == 1
    assert REGISTRY.get_sample_value("kvmesh_gateway_route_retries_total") == retries + 1
    for n in range(4):  # every new Route goes to the live one
        assert (await route(client, f"n{n}")).worker.id.endswith(f"@{routers.fakes[1 - dying].name}")


async def test_bookkeeping_moves_to_a_live_router_and_the_unsettled_is_sent_again(routers):
    client = routers.client
    owned = {}
    for n in range(4):
        owned[f"r{n}"] = (await route(client, f"r{n}")).worker.id.rsplit("@", 1)[1]
    a, b = routers.fakes
    a_ids = [r for r, name in owned.items() if name == "a"]
    b_ids = [r for r, name in owned.items() if name == "b"]
    client.release(b_ids[0])  # each to its owner, after its Route
    client.release(a_ids[0])  # a may not have applied it when it dies
    await until(lambda: ("released", a_ids[0]) in a.bookkeeping and ("released", b_ids[0]) in b.bookkeeping)
    b.bookkeeping.clear()
    await routers.stop(0)
    await until(lambda: routers.up(0) == 0)
    client.mark_prefilled(a_ids[1])  # a request a routed: to the live one
    client.release(a_ids[1])
    await until(lambda: ("released", a_ids[1]) in b.bookkeeping)
    assert b.bookkeeping == [("released", a_ids[0]), ("prefilled", a_ids[1]), ("released", a_ids[1])]


async def test_a_router_back_takes_routes_again(routers):
    client = routers.client
    await routers.stop(0)
    await route(client, "r0")  # found broken, or left already
    await until(lambda: routers.up(0) == 0)
    routers.fakes[0].routed.clear()
    await routers.start(0)
    await until(lambda: routers.up(0) == 1)
    for n in range(4):
        await route(client, f"r{n + 1}")
    assert len(routers.fakes[0].routed) == 2


async def test_with_no_router_a_route_waits_for_one_and_bookkeeping_is_held(routers, monkeypatch):
    client = routers.client
    await route(client, "r0")
    await route(client, "r1")
    await routers.stop(0)
    await routers.stop(1)
    await until(lambda: routers.up(0) == routers.up(1) == 0)
    client.release("r0")
    waiting = asyncio.ensure_future(route(client, "r2"))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await routers.start(1)
    assert (await waiting).worker.id == "worker-for-r2@b"
    await until(lambda: ("released", "r0") in routers.fakes[1].bookkeeping)
    await routers.stop(1)
    await until(lambda: routers.up(1) == 0)
    monkeypatch.setattr(router_client, "ROUTE_TIMEOUT_S", 0.3)
    with pytest.raises(Unavailable, match="no router answers"):
        await route(client, "r3")


@pytest.mark.parametrize(
    ("given", "kept"),
    [("127.0.0.1:8090", "127.0.0.1:8090"), ("a:1, b:2", "a:1,b:2"), ("[::1]:8090,c:3", "[::1]:8090,c:3")],
)
def test_router_address_takes_one_or_several(given, kept):
    assert GatewaySettings(router_address=given).router_address == kept


@pytest.mark.parametrize("given", ["a", "a:1,", "a:x", ":1"])
def test_a_bad_router_address_is_refused_naming_it(given):
    with pytest.raises(ValueError, match="is not host:port"):
        GatewaySettings(router_address=given)


async def test_a_session_asks_its_router_how_it_decides_only_when_told_to():
    fake = FakeRouter(paired=False)
    server, port = await serve(fake)
    seen: list[router_pb2.RoutingSettings] = []
    asking, silent = RouterClient(f"127.0.0.1:{port}", on_settings=seen.append), RouterClient(f"127.0.0.1:{port}")
    try:
        await route(asking, "r1")
        assert [s.policy for s in seen] == ["of-router"]  # before the Route's answer
        await route(silent, "r2")
        assert sum(kinds.count("settings") for kinds in fake.kinds) == 1  # the asking client's session
    finally:
        await asking.close()
        await silent.close()
        await server.stop(0)

"""services/router/servicer.py: a Session that asks gets the router's routing settings."""

from kvmesh.routing.config import RoutingConfig
from kvmesh.v1 import router_pb2
from services.router.servicer import RouterServicer


async def test_a_session_that_asks_is_told_how_the_router_decides():
    settings = RoutingConfig(policy="dynamo").to_proto()
    servicer = RouterServicer(router=None, settings=settings)  # no Route: the router is not asked

    async def messages():
        yield router_pb2.SessionRequest(settings=True)

    answers = [a async for a in servicer.Session(messages(), None)]
    assert answers[0].settings == settings
    assert answers[-1].summary == router_pb2.SessionSummary()

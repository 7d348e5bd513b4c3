"""The planner scrapes a gateway whose metrics are on an HTTPS port asking for a certificate of the
mesh's CA (`kvmesh up --tls-dir` with auth off): with its own certificate it reads them; a client
that only trusts the CA, or trusts nothing of the mesh, is refused."""

import asyncio

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from kvmesh.tls import FrontTls, MutualTls, trusting
from services.planner.observe import GatewayMetrics, MetricsUnavailable, scrape
from tests.support.certs import ours_and_another_ca


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return ours_and_another_ca(tmp_path_factory)


@pytest.fixture
async def gateway(dirs):
    """An HTTPS /metrics as the gateway serves it under --tls-dir; yields (url, its prompt-length histogram)."""
    registry = CollectorRegistry()
    isl = Histogram("kvmesh_gateway_prompt_length_tokens", "", buckets=(128, 1024), registry=registry)

    async def metrics(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": generate_latest(registry)})

    front = FrontTls(dirs[0] / "gateway.crt", dirs[0] / "gateway.key", dirs[0] / "ca.crt", require_client_cert=True)
    config = uvicorn.Config(metrics, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                            **front.uvicorn_kwargs())  # fmt: skip
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    yield f"https://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/metrics", isl
    server.should_exit = True
    await serving


async def test_the_planner_shows_its_certificate_and_reads_the_metrics(dirs, gateway):
    url, isl = gateway
    source = GatewayMetrics([url], percentile=50, tls=MutualTls.in_dir(dirs[0], "planner"))
    with pytest.raises(MetricsUnavailable, match="first scrape"):  # answered: nothing to difference yet
        await asyncio.to_thread(source.observe)
    for n in (100, 300):
        isl.observe(n)
    observed = await asyncio.to_thread(source.observe)
    assert observed.isl_mean == 200 and observed.requests_per_s > 0


async def test_a_scraper_without_the_mesh_certificate_is_refused(dirs, gateway):
    url, _ = gateway
    with pytest.raises(httpx.HTTPError):  # trusts the gateway but shows nothing: the handshake fails
        await asyncio.to_thread(scrape, url, 2.0, trusting(dirs[0] / "ca.crt"))
    another_ca = MutualTls.in_dir(dirs[1], "planner")
    with pytest.raises(httpx.HTTPError):
        await asyncio.to_thread(scrape, url, 2.0, another_ca.client_ssl_context())
    with pytest.raises(MetricsUnavailable, match="no gateway metrics"):  # the system's CAs only
        await asyncio.to_thread(GatewayMetrics([url], percentile=50).observe)

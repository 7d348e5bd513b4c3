"""What each host exposes: every listening socket on the host's own address or loopback (Triton and
vLLM; NIXL and UCX in test_disaggregated.py), Triton's repository API closed to the gateway's host, Redis closed
to a client without the password."""

import pytest

pytestmark = pytest.mark.integration


def test_every_listening_socket_is_on_the_hosts_address_or_loopback(aggregated):
    assert not (offenders := aggregated.off_address_listeners()), f"listening beyond the host's address: {offenders}"
    assert any(s.process == "tritonserver" for s in aggregated.hosts["w1"].ss_listening())


def test_tritons_repository_api_refuses_the_gateways_host(aggregated):
    for worker in aggregated.client.workers(router=aggregated.mesh.router):
        answer = aggregated.gw.triton_repository_index(address=worker["triton"])
        assert answer.startswith("refused:") and "restricted" in answer.lower(), answer


def test_tritons_http_repository_api_refuses_the_gateways_host(aggregated):
    for worker in aggregated.client.workers(router=aggregated.mesh.router):
        host = next(h for h in aggregated.hosts.values() if worker["triton"].startswith(f"{h.address}:"))
        grpc_port, metrics_port = int(worker["triton"].rsplit(":", 1)[1]), int(worker["metrics"].rsplit(":", 1)[1])
        # Triton's third port, its HTTP (the record names only gRPC and metrics).
        (http_port,) = {s.port for s in host.ss_listening() if s.process == "tritonserver"} - {grpc_port, metrics_port}
        answer = aggregated.gw.http_post_status(url=f"http://{host.address}:{http_port}/v2/repository/index")
        assert answer.startswith("403 ") and "kvmesh-admin-key" in answer, answer


def test_redis_refuses_a_client_without_the_password(aggregated):
    mesh = aggregated.mesh
    without = mesh.redis_url.replace(f":{mesh.redis_password}@", "")
    # redis-py's name for Redis's NOAUTH answer.
    assert aggregated.gw.redis_ping(url=without).startswith("AuthenticationError"), without
    assert aggregated.gw.redis_ping(url=mesh.redis_url) == "True"

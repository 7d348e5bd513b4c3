"""A server given mutual TLS (kvmesh.grpc_server.serve with kvmesh.tls) answers a channel made with
a certificate from its CA (kvmesh.grpc_server.channel), and refuses one without a certificate, one
that does not use TLS and one whose certificate comes from another CA."""

import gc

import grpc
import pytest

from kvmesh import grpc_server
from kvmesh.tls import MutualTls
from tests.support.certs import ours_and_another_ca


async def echo(request: bytes, context) -> bytes:
    return b"echo:" + request


ECHO = grpc.method_handlers_generic_handler("test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return ours_and_another_ca(tmp_path_factory)


@pytest.fixture
async def address(dirs):
    served = await grpc_server.serve(
        "test", "127.0.0.1", 0, lambda server: server.add_generic_rpc_handlers((ECHO,)),
        tls=MutualTls.in_dir(dirs[0], "router"),
    )  # fmt: skip
    yield f"127.0.0.1:{served.port}"
    await served.server.stop(None)
    gc.unfreeze()  # serve() froze the test session's heap


async def call(channel: grpc.aio.Channel) -> bytes:
    async with channel:
        return await channel.unary_unary("/test.Echo/Echo")(b"x", timeout=5)


async def test_a_client_with_a_certificate_from_the_ca_is_served(dirs, address):
    assert await call(grpc_server.channel(address, MutualTls.in_dir(dirs[0], "gateway"))) == b"echo:x"


async def test_a_client_without_a_certificate_is_refused(dirs, address):
    ca_only = grpc.ssl_channel_credentials(root_certificates=(dirs[0] / "ca.crt").read_bytes())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(grpc.aio.secure_channel(address, ca_only))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_plaintext_client_is_refused(address):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(grpc_server.channel(address))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_with_a_certificate_from_another_ca_is_refused(dirs, address):
    # It trusts our CA (so it would accept the server) but shows a certificate of its own CA.
    other = MutualTls.in_dir(dirs[1], "gateway")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(dirs[0] / "ca.crt").read_bytes(),
        private_key=other.key.read_bytes(),
        certificate_chain=other.cert.read_bytes(),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(grpc.aio.secure_channel(address, credentials))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

"""A server given mutual TLS (kvmesh.grpc_server.serve with kvmesh.tls) answers a channel made with
a certificate from its CA (kvmesh.grpc_server.channel), and refuses one without a certificate, one
that does not use TLS and one whose certificate comes from another CA. The front's TLS (FrontTls,
gRPC and uvicorn's HTTPS) serves clients without a certificate unless told to require one, and
shows new connections the certificate files as they are now: after they change, or after SIGHUP."""

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import ssl
import time
from pathlib import Path
from typing import ClassVar

import grpc
import httpx
import pytest
import uvicorn
from cryptography import x509

from kvmesh import grpc_server
from kvmesh.settings import CommonSettings, load
from kvmesh.tls import FrontTls, MutualTls, install_sighup, uninstall_sighup
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


# FrontTls: the gateway's client-facing ports. Certificates come from one `kvmesh certs dev` directory
# (the same CA, a different serial each), copied to front.crt/front.key and replaced as a
# certificate tool would (a new file renamed over the old).


def serial(directory: Path, name: str) -> int:
    return x509.load_pem_x509_certificate((directory / f"{name}.crt").read_bytes()).serial_number


def install(directory: Path, name: str, into: Path, part: str = "both") -> None:
    for ext in ("crt", "key") if part == "both" else (part,):
        temporary = into / f".front.{ext}.new"
        shutil.copy(directory / f"{name}.{ext}", temporary)
        os.replace(temporary, into / f"front.{ext}")


@pytest.fixture
def front_dir(dirs, tmp_path):
    install(dirs[0], "gateway", tmp_path)
    return tmp_path


async def served_serial(port: int, ca: Path, alpn: str) -> int:
    """The serial of the certificate a new TLS handshake with 127.0.0.1:`port` shows."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols([alpn])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()


@pytest.fixture
async def front_grpc(front_dir):
    front = FrontTls(front_dir / "front.crt", front_dir / "front.key")
    served = await grpc_server.serve(
        "test", "127.0.0.1", 0, lambda server: server.add_generic_rpc_handlers((ECHO,)),
        credentials=front.grpc_credentials(),
    )  # fmt: skip
    yield served.port
    await served.server.stop(None)
    gc.unfreeze()


async def test_the_front_grpc_port_serves_a_client_without_a_certificate(dirs, front_grpc):
    ca_only = grpc.ssl_channel_credentials(root_certificates=(dirs[0] / "ca.crt").read_bytes())
    assert await call(grpc.aio.secure_channel(f"localhost:{front_grpc}", ca_only)) == b"echo:x"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(grpc_server.channel(f"127.0.0.1:{front_grpc}"))  # plain text to a TLS port
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_front_grpc_port_shows_new_certificate_files_to_new_connections(dirs, front_dir, front_grpc):
    ca = dirs[0] / "ca.crt"
    assert await served_serial(front_grpc, ca, "h2") == serial(dirs[0], "gateway")
    install(dirs[0], "router", front_dir)
    assert await served_serial(front_grpc, ca, "h2") == serial(dirs[0], "router")


async def test_a_certificate_without_its_key_is_not_loaded_until_the_key_comes(dirs, front_dir, front_grpc):
    ca = dirs[0] / "ca.crt"
    install(dirs[0], "router", front_dir, part="crt")  # half way through a renewal: the old key
    assert await served_serial(front_grpc, ca, "h2") == serial(dirs[0], "gateway")
    install(dirs[0], "router", front_dir, part="key")
    assert await served_serial(front_grpc, ca, "h2") == serial(dirs[0], "router")


async def test_a_front_requiring_client_certificates_refuses_a_client_without_one(dirs, front_dir):
    front = FrontTls(front_dir / "front.crt", front_dir / "front.key", dirs[0] / "ca.crt", require_client_cert=True)
    served = await grpc_server.serve(
        "test", "127.0.0.1", 0, lambda server: server.add_generic_rpc_handlers((ECHO,)),
        credentials=front.grpc_credentials(),
    )  # fmt: skip
    try:
        address = f"localhost:{served.port}"
        assert await call(grpc_server.channel(address, MutualTls.in_dir(dirs[0], "client"))) == b"echo:x"
        ca_only = grpc.ssl_channel_credentials(root_certificates=(dirs[0] / "ca.crt").read_bytes())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(grpc.aio.secure_channel(address, ca_only))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await served.server.stop(None)
        gc.unfreeze()


async def hello(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


@contextlib.asynccontextmanager
async def https_server(front: FrontTls, poll_s: float):
    """uvicorn on a free port with the front's TLS, watched; yields its port."""
    config = uvicorn.Config(hello, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                            **front.uvicorn_kwargs())  # fmt: skip
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    watching = asyncio.create_task(front.watch(config, poll_s=poll_s))
    try:
        await wait_until(lambda: server.started or serving.done())
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        watching.cancel()
        server.should_exit = True
        await serving


async def wait_until(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_the_front_https_port_shows_new_certificate_files_to_new_connections(dirs, front_dir):
    ca = dirs[0] / "ca.crt"
    async with https_server(FrontTls(front_dir / "front.crt", front_dir / "front.key"), poll_s=0.05) as port:
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))) as client:
            assert (await client.get(f"https://localhost:{port}/")).text == "hello"
        assert await served_serial(port, ca, "http/1.1") == serial(dirs[0], "gateway")
        install(dirs[0], "router", front_dir)
        deadline = time.monotonic() + 5
        while await served_serial(port, ca, "http/1.1") != serial(dirs[0], "router"):
            assert time.monotonic() < deadline, "the new certificate was not loaded"
            await asyncio.sleep(0.05)


async def test_after_sighup_new_connections_see_the_new_certificate(dirs, front_dir):
    ca = dirs[0] / "ca.crt"
    # Polling once an hour: only SIGHUP can make it load the new files within the test.
    async with https_server(FrontTls(front_dir / "front.crt", front_dir / "front.key"), poll_s=3600) as port:
        install_sighup()
        try:
            install(dirs[0], "router", front_dir)
            await asyncio.sleep(0.2)
            assert await served_serial(port, ca, "http/1.1") == serial(dirs[0], "gateway")
            os.kill(os.getpid(), signal.SIGHUP)
            deadline = time.monotonic() + 5
            while await served_serial(port, ca, "http/1.1") != serial(dirs[0], "router"):
                assert time.monotonic() < deadline, "SIGHUP did not reload the certificate"
                await asyncio.sleep(0.05)
        finally:
            uninstall_sighup()


async def test_install_sighup_refuses_to_replace_another_handler():
    previous = signal.signal(signal.SIGHUP, lambda *_: None)
    try:
        with pytest.raises(RuntimeError, match="SIGHUP already has a handler"):
            install_sighup()
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_front_tls_from_settings(dirs):
    class Front(CommonSettings):
        tls_ca_optional: ClassVar[bool] = True

    cert, key, ca = (f"--tls-{k}={dirs[0] / f}" for k, f in (("cert", "gateway.crt"), ("key", "gateway.key"),
                                                             ("ca", "ca.crt")))  # fmt: skip
    assert FrontTls.of(load(Front, []), api_keys=False) is None
    without_ca = FrontTls.of(load(Front, [cert, key]), api_keys=False)
    assert (without_ca.ca, without_ca.require_client_cert) == (None, False)
    assert FrontTls.of(load(Front, [cert, key, ca]), api_keys=False).require_client_cert  # no keys: certificates
    assert not FrontTls.of(load(Front, [cert, key, ca]), api_keys=True).require_client_cert
    with pytest.raises(SystemExit, match="TLS needs --tls-cert and --tls-key; missing --tls-key"):
        load(Front, [cert, ca])
    with pytest.raises(ValueError, match="needs --tls-ca"):
        FrontTls(dirs[0] / "gateway.crt", dirs[0] / "gateway.key", require_client_cert=True)

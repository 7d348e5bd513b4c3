"""API keys in a real Redis and the auth interceptor on a real gRPC server: who may call what,
with the status a refused caller gets."""

import asyncio
import gc

import grpc
import pytest
import redis.asyncio as aioredis

from kvmesh import auth, grpc_server
from kvmesh.api_keys import ApiKey, KeyStore, digest
from kvmesh.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated, Unavailable

MESH_TOKEN = "mesh-token-0123456789abcdef"


@pytest.fixture
async def store(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield KeyStore(client, cache_s=0.05)
    await client.aclose()


async def test_a_key_is_stored_by_its_hash_only(store):
    secret = await store.create(ApiKey(name="team-a", rpm=600, priority="high", models=("m1",)))
    assert secret.startswith("kvm-") and len(secret) == 47
    stored = b"".join(k + v for k, v in (await store.redis.hgetall("kvkeys:{keys}:records")).items())
    assert secret.encode() not in stored and digest(secret).encode() in stored
    key = await store.lookup(secret)
    assert (key.name, key.rpm, key.priority, key.models, key.role) == ("team-a", 600, "high", ("m1",), "user")
    assert key.created > 0
    assert await store.lookup(secret + "x") is None


async def test_revoked_keys_stop_working_and_names_are_unique(store):
    secret = await store.create(ApiKey(name="team-a"))
    with pytest.raises(FailedPrecondition, match="team-a"):
        await store.create(ApiKey(name="team-a"))
    await store.revoke("team-a")
    await asyncio.sleep(0.06)  # past the lookup cache
    assert await store.lookup(secret) is None
    with pytest.raises(NotFound):
        await store.revoke("team-a")
    assert await store.list() == []


@pytest.mark.parametrize(
    "key, field",
    [(ApiKey(name="a b"), "name"), (ApiKey(name="x", rpm=-1), "rpm"), (ApiKey(name="x", role="mesh"), "role")],
)
async def test_bad_keys_are_refused_naming_the_field(store, key, field):
    with pytest.raises(InvalidArgument) as refused:
        await store.create(key)
    assert refused.value.param == field


FIRST, SECOND = "kvm-" + "1" * 64, "kvm-" + "2" * 64


async def test_ensure_puts_a_given_secret_in_place(store):
    await store.ensure(ApiKey(name="admin", role="admin"), FIRST)
    await store.ensure(ApiKey(name="admin", role="admin"), SECOND)
    assert await store.lookup(FIRST) is None
    assert (await store.lookup(SECOND)).role == "admin"
    with pytest.raises(InvalidArgument, match="kvm-"):
        await store.ensure(ApiKey(name="admin", role="admin"), "short")


async def test_gateways_starting_together_all_ensure_the_same_key(store):
    admin = ApiKey(name="admin", role="admin")
    await asyncio.gather(*(KeyStore(store.redis).ensure(admin, FIRST) for _ in range(4)))
    assert (await store.lookup(FIRST)).name == "admin"


async def test_secrets_that_cannot_be_keys_never_reach_redis(store, monkeypatch):
    async def no_redis(*args):
        raise AssertionError("asked Redis")

    monkeypatch.setattr(store.redis, "hget", no_redis)
    for junk in ("", "kvm-", "kvm-short", "x" * 47, "kvm-" + "é" * 43, "kvm-" + "a" * 129):
        assert await store.lookup(junk) is None


async def test_an_unreachable_key_store_is_unavailable_not_a_crash():
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    with pytest.raises(Unavailable, match="key store is unreachable") as failed:
        await KeyStore(dead).lookup(FIRST)
    assert "127.0.0.1" not in failed.value.message
    await dead.aclose()


async def test_identify_reads_bearer_values(store):
    secret = await store.create(ApiKey(name="team-a"))
    who = auth.Authenticator(store, MESH_TOKEN)
    assert (await who.identify(f"Bearer {secret}")).name == "team-a"
    assert (await who.identify(f"bearer  {secret} ")).name == "team-a"
    assert await who.identify(f"Bearer {MESH_TOKEN}") is auth.MESH
    for bad in (None, "", "Basic abc", "Bearer", f"Bearer {secret}0"):
        with pytest.raises(Unauthenticated):
            await who.identify(bad)


def test_policy_longest_prefix_and_closed_by_default():
    assert auth.roles_for("/kvmesh.v1.KvIndex/Purge") == auth.ADMIN
    assert auth.roles_for("/kvmesh.v1.KvIndex/Match") == auth.INTERNAL
    assert auth.roles_for("/kvmesh.v1.Inference/Generate") == auth.USER
    assert auth.roles_for("/grpc.health.v1.Health/Check") == auth.OPEN
    assert auth.roles_for("/kvmesh.v1.Future/Anything") == auth.ADMIN


async def _echo(request: bytes, context) -> bytes:
    caller = auth.CALLER.get()
    return f"{caller.name if caller else '-'}:".encode() + request


async def _stream(request: bytes, context):
    yield auth.CALLER.get().name.encode()


HANDLERS = [
    grpc.method_handlers_generic_handler(
        "kvmesh.v1.Inference", {"Generate": grpc.unary_stream_rpc_method_handler(_stream)}
    ),
    grpc.method_handlers_generic_handler(
        "kvmesh.v1.KvIndex",
        {
            "Match": grpc.unary_unary_rpc_method_handler(_echo),
            "Purge": grpc.unary_unary_rpc_method_handler(_echo),
        },
    ),  # fmt: skip
]


@pytest.fixture
async def secured(store):
    user = await store.create(ApiKey(name="team-a"))
    admin = await store.create(ApiKey(name="ops", role="admin"))
    interceptor = auth.AuthInterceptor(auth.Authenticator(store, MESH_TOKEN))
    served = await grpc_server.serve(
        "test", "127.0.0.1", 0, lambda s: s.add_generic_rpc_handlers(HANDLERS), interceptors=[interceptor]
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        yield channel, {"user": user, "admin": admin, "mesh": MESH_TOKEN}
    await served.server.stop(None)
    gc.unfreeze()


async def _status(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def test_each_role_gets_what_the_policy_says(secured):
    channel, secrets = secured
    purge, match = channel.unary_unary("/kvmesh.v1.KvIndex/Purge"), channel.unary_unary("/kvmesh.v1.KvIndex/Match")
    expected = {
        "user": (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED),
        "mesh": (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK),
        "admin": (grpc.StatusCode.OK, grpc.StatusCode.OK),
    }
    for role, (purge_code, match_code) in expected.items():
        metadata = auth.bearer(secrets[role])
        assert await _status(purge(b"x", metadata=metadata)) == purge_code, role
        assert await _status(match(b"x", metadata=metadata)) == match_code, role
    assert await match(b"x", metadata=auth.bearer(secrets["admin"])) == b"ops:x"
    assert await _status(match(b"x")) == grpc.StatusCode.UNAUTHENTICATED
    assert await _status(match(b"x", metadata=auth.bearer("kvm-wrong"))) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_refusal_names_the_role_needed(secured):
    channel, secrets = secured
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await channel.unary_unary("/kvmesh.v1.KvIndex/Purge")(b"x", metadata=auth.bearer(secrets["user"]))
    assert refused.value.details() == "Purge needs an admin key; key 'team-a' is a user key"


async def test_streams_are_checked_before_they_start_and_see_their_caller(secured):
    channel, secrets = secured
    generate = channel.unary_stream("/kvmesh.v1.Inference/Generate")
    assert [m async for m in generate(b"", metadata=auth.bearer(secrets["user"]))] == [b"team-a"]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in generate(b""):
            pass
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_service_with_auth_on_needs_the_mesh_token(monkeypatch):
    monkeypatch.delenv(auth.MESH_TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit, match="KVMESH_MESH_TOKEN"):
        auth.mesh_token(required=True)
    assert auth.mesh_token(required=False) == ""

"""kvmesh.v1.Keys over a real Redis: proto ↔ keys and usage, and nothing at all while auth is off
(keys made then would outlive it)."""

import pytest

from kvmesh.api_keys import KeyStore
from kvmesh.errors import FailedPrecondition
from kvmesh.quota import Quotas
from kvmesh.v1 import keys_pb2
from services.gateway.keys_servicer import KeysServicer


def servicer(client, auth_on: bool) -> KeysServicer:
    return KeysServicer(KeyStore(client), Quotas(client), auth_on=auth_on)


async def test_a_key_made_listed_metered_and_revoked(client):
    keys = servicer(client, auth_on=True)
    info = keys_pb2.KeyInfo(name="team-a", rpm=60, priority=keys_pb2.PRIORITY_HIGH, models=["m1"])
    made = await keys.Create(keys_pb2.KeysCreateRequest(key=info), None)
    assert made.secret.startswith("kvm-") and made.key.role == keys_pb2.KEY_ROLE_USER and made.key.created_unix > 0
    metered = await keys.quotas.admit(await keys.keys.lookup(made.secret), "r1", 7)
    await metered.finish("m1", 7, 2, 3)
    listed = await keys.List(keys_pb2.KeysListRequest(), None)
    assert [(k.name, k.rpm, k.priority, list(k.models)) for k in listed.keys] == [
        ("team-a", 60, keys_pb2.PRIORITY_HIGH, ["m1"])
    ]
    usage = await keys.Usage(keys_pb2.KeysUsageRequest(names=["team-a"]), None)
    row = usage.rows[0]
    assert (row.model, row.requests, row.prompt_tokens, row.cached_tokens, row.completion_tokens) == ("m1", 1, 7, 2, 3)
    assert len(row.hour) == len("2026-12-07T05")
    await keys.Revoke(keys_pb2.KeysRevokeRequest(name="team-a"), None)
    assert (await keys.List(keys_pb2.KeysListRequest(), None)).keys == []


async def test_with_auth_off_nothing_is_made_or_shown(client):
    keys = servicer(client, auth_on=False)
    calls = [
        keys.Create(keys_pb2.KeysCreateRequest(key=keys_pb2.KeyInfo(name="x", role=keys_pb2.KEY_ROLE_ADMIN)), None),
        keys.List(keys_pb2.KeysListRequest(), None),
        keys.Revoke(keys_pb2.KeysRevokeRequest(name="x"), None),
        keys.Usage(keys_pb2.KeysUsageRequest(), None),
    ]
    for call in calls:
        with pytest.raises(FailedPrecondition, match="--auth on"):
            await call
    assert await client.hlen("kvkeys:{keys}:records") == 0

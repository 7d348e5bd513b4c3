"""gRPC kvmesh.v1 Keys: API keys and their usage, proto ↔ kvmesh.api_keys / kvmesh.quota. Only an
admin key gets here (kvmesh/auth.py's POLICY)."""

from __future__ import annotations

from kvmesh.api_keys import ApiKey, KeyStore
from kvmesh.errors import FailedPrecondition
from kvmesh.quota import HOUR_FORMAT, Quotas
from kvmesh.v1 import keys_pb2, keys_pb2_grpc

ROLES = {keys_pb2.KEY_ROLE_UNSPECIFIED: "user", keys_pb2.KEY_ROLE_USER: "user", keys_pb2.KEY_ROLE_ADMIN: "admin"}
PRIORITY_NAMES = {
    keys_pb2.PRIORITY_UNSPECIFIED: "normal",
    keys_pb2.PRIORITY_HIGH: "high",
    keys_pb2.PRIORITY_NORMAL: "normal",
    keys_pb2.PRIORITY_LOW: "low",
}
ROLE_ENUM = {"user": keys_pb2.KEY_ROLE_USER, "admin": keys_pb2.KEY_ROLE_ADMIN}
PRIORITY_ENUM = {"high": keys_pb2.PRIORITY_HIGH, "normal": keys_pb2.PRIORITY_NORMAL, "low": keys_pb2.PRIORITY_LOW}
DEFAULT_USAGE_HOURS = 24


def key_from_proto(info: keys_pb2.KeyInfo) -> ApiKey:
    return ApiKey(
        name=info.name,
        role=ROLES.get(info.role, "user"),
        rpm=info.rpm,
        tpm=info.tpm,
        max_concurrency=info.max_concurrency,
        priority=PRIORITY_NAMES.get(info.priority, "normal"),
        models=tuple(info.models),
    )


def key_to_proto(key: ApiKey) -> keys_pb2.KeyInfo:
    return keys_pb2.KeyInfo(
        name=key.name,
        role=ROLE_ENUM.get(key.role, keys_pb2.KEY_ROLE_UNSPECIFIED),
        rpm=key.rpm,
        tpm=key.tpm,
        max_concurrency=key.max_concurrency,
        priority=PRIORITY_ENUM[key.priority],
        models=key.models,
        created_unix=key.created,
    )


class KeysServicer(keys_pb2_grpc.KeysServicer):
    def __init__(self, keys: KeyStore, quotas: Quotas, auth_on: bool):
        """`auth_on`: without it there is no admin to manage keys, and keys made then would outlive it."""
        self.keys = keys
        self.quotas = quotas
        self.auth_on = auth_on

    def _needs_auth(self) -> None:
        if not self.auth_on:
            raise FailedPrecondition("API keys are off on this gateway (--auth off, or auto on loopback): "
                                     "start it with --auth on to manage keys")  # fmt: skip

    async def Create(self, request, context):
        self._needs_auth()
        secret = await self.keys.create(key_from_proto(request.key))
        created = await self.keys.lookup(secret)
        return keys_pb2.KeysCreateResponse(key=key_to_proto(created), secret=secret)

    async def List(self, request, context):
        self._needs_auth()
        return keys_pb2.KeysListResponse(keys=[key_to_proto(k) for k in await self.keys.list()])

    async def Revoke(self, request, context):
        self._needs_auth()
        await self.keys.revoke(request.name)
        return keys_pb2.KeysRevokeResponse()

    async def Usage(self, request, context):
        self._needs_auth()
        rows = await self.quotas.usage(list(request.names) or None, request.hours or DEFAULT_USAGE_HOURS)
        return keys_pb2.KeysUsageResponse(
            rows=[
                keys_pb2.UsageRow(
                    name=r.name, hour=r.hour.strftime(HOUR_FORMAT), model=r.model, requests=r.requests,
                    prompt_tokens=r.prompt_tokens, cached_tokens=r.cached_tokens, completion_tokens=r.completion_tokens,
                )
                for r in rows
            ]
        )  # fmt: skip

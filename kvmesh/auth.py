"""Who is calling, and may they: a bearer secret → an API key (kvmesh/api_keys.py) or the mesh's
own identity; one table of which role each gRPC method needs; the interceptor that holds every
call to it. The mesh's services show each other the token in KVMESH_MESH_TOKEN."""

from __future__ import annotations

import contextvars
import hmac
import os
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import redis.asyncio as aioredis

from kvmesh.api_keys import ApiKey, KeyStore
from kvmesh.errors import PermissionDenied, Unauthenticated
from kvmesh.grpc_server import HANDLER_KINDS
from kvmesh.settings import CommonSettings

MESH_TOKEN_ENV = "KVMESH_MESH_TOKEN"
# An admin key handed in from outside (kvmesh up makes one; on Kubernetes, a Secret): the gateway
# stores its hash as the key named "admin", so whoever holds it can make the others.
ADMIN_KEY_ENV = "KVMESH_ADMIN_KEY"
MESH = ApiKey(name="mesh", role="mesh")

OPEN: frozenset[str] = frozenset()
USER = frozenset({"user", "admin"})
INTERNAL = frozenset({"mesh", "admin"})
ADMIN = frozenset({"admin"})
# Method (or service prefix) → the roles that may call it; the longest prefix wins and a method
# named nowhere needs ADMIN, so a new RPC is closed until someone opens it here.
POLICY: Mapping[str, frozenset[str]] = {
    "/grpc.health.v1.Health/": OPEN,
    "/kvmesh.v1.Inference/": USER,
    "/kvmesh.v1.Models/": USER,
    "/kvmesh.v1.Keys/": ADMIN,
    "/kvmesh.v1.Router/": INTERNAL,
    "/kvmesh.v1.KvIndex/": INTERNAL,
    "/kvmesh.v1.KvIndex/Purge": ADMIN,
    "/kvmesh.v1.Planner/": INTERNAL,
    "/kvmesh.v1.Planner/SetTargets": ADMIN,
}

# The caller of the gRPC call being served (set by AuthInterceptor), for handlers that meter it.
CALLER: contextvars.ContextVar[ApiKey | None] = contextvars.ContextVar("kvmesh_caller", default=None)


def roles_for(method: str) -> frozenset[str]:
    best = max((prefix for prefix in POLICY if method.startswith(prefix)), key=len, default=None)
    return POLICY[best] if best is not None else ADMIN


def mesh_token(required: bool) -> str:
    """This process's mesh token; a service with auth on cannot reach its peers without one."""
    token = os.environ.get(MESH_TOKEN_ENV, "")
    if required and len(token) < 16:
        raise SystemExit(
            f"auth is on, so the services must know each other: set {MESH_TOKEN_ENV} to one shared secret "
            "(16+ characters) in every service's environment (kvmesh up makes one)"
        )
    return token


def interceptors(settings: CommonSettings, redis: aioredis.Redis) -> list[grpc.aio.ServerInterceptor]:
    """What a service's gRPC server checks callers with: nothing when its settings turn auth off."""
    if not settings.auth_enabled:
        return []
    return [AuthInterceptor(Authenticator(KeyStore(redis), mesh_token(required=True)))]


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata that presents `token`; none for no token."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class Authenticator:
    def __init__(self, keys: KeyStore, mesh_token: str):
        self.keys = keys
        self._mesh_token = mesh_token

    async def identify(self, authorization: str | None) -> ApiKey:
        """The key behind an `Authorization: Bearer <secret>` value; Unauthenticated otherwise."""
        if not authorization:
            raise Unauthenticated("no API key: send it as 'Authorization: Bearer <key>'")
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthenticated("malformed authorization: expected 'Bearer <key>'")
        if self._mesh_token and hmac.compare_digest(secret.encode(), self._mesh_token.encode()):
            return MESH
        key = await self.keys.lookup(secret)
        if key is None:
            raise Unauthenticated("the API key is not valid (unknown or revoked)")
        return key


def permit(caller: ApiKey, roles: frozenset[str], what: str) -> None:
    if roles and caller.role not in roles:
        need = "an admin key" if roles == ADMIN else " or ".join(sorted(roles)) + " role"
        raise PermissionDenied(f"{what} needs {need}; key {caller.name!r} is a {caller.role} key")


def permit_model(caller: ApiKey | None, model: str) -> None:
    if caller is not None and not caller.may_use(model):
        raise PermissionDenied(f"model: key {caller.name!r} may not use {model!r}", param="model")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Every call but the open ones shows a key of a role its method allows (POLICY), before the
    handler sees its request; the caller's key is in CALLER for the handler."""

    def __init__(self, authenticator: Authenticator):
        self.authenticator = authenticator

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        roles = roles_for(details.method)
        if handler is None or not roles:
            return handler
        authorization = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        method = details.method.rsplit("/", 1)[-1]

        async def check() -> None:
            caller = await self.authenticator.identify(authorization)
            permit(caller, roles, method)
            CALLER.set(caller)

        for kind, make in HANDLER_KINDS:
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                wrapped = _streaming(behaviour, check) if kind.endswith("stream") else _unary(behaviour, check)
                return make(wrapped, handler.request_deserializer, handler.response_serializer)
        return handler


def _unary(behaviour: Callable, check: Callable) -> Callable:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await check()
        return await behaviour(request, context)

    return call


def _streaming(behaviour: Callable, check: Callable) -> Callable:
    async def stream(request: Any, context: grpc.aio.ServicerContext):
        await check()
        async for response in behaviour(request, context):
            yield response

    return stream

"""API keys, kept in Redis. A key's secret is `kvm-` and 43 URL-safe characters (256 random bits),
shown once when it is made; Redis holds only its SHA-256 beside the key's record. A fast hash is
enough here: the secret is random, not a password a person chose, so there is nothing to guess.

    kvkeys:{keys}:records  HASH  sha256(secret) → the record (JSON)
    kvkeys:{keys}:names    HASH  name → sha256(secret)

(one hash tag: what changes both does so in one step, also on a cluster)
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Literal

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kvmesh.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

PREFIX = "kvm-"
RECORDS = "kvkeys:{keys}:records"
NAMES = "kvkeys:{keys}:names"
# `ensure` in one step: gateways starting together each put the same key in place, and none can
# undo another's (a revoke between another's create and its check did).
ENSURE = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old == ARGV[2] then return 0 end
if old then redis.call('HDEL', KEYS[1], old) end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# What any key looks like (ours: 43 characters after the prefix; one handed in, e.g. `kvm-` and 64
# hex digits, may be longer): anything else is refused without asking Redis.
SECRET = re.compile(r"kvm-[A-Za-z0-9_-]{32,128}")
# A found key is reused this long: a revoked key stops working within it on every gateway. Only
# found keys are kept, so random wrong secrets can neither grow the cache nor push real keys out.
CACHE_S = 1.0

Priority = Literal["high", "normal", "low"]
Role = Literal["user", "admin", "mesh"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # quotas and usage are kept by name
    role: Role = "user"
    rpm: int = 0  # requests per minute; 0: no limit
    tpm: int = 0  # prompt + completion tokens per minute; 0: no limit
    max_concurrency: int = 0  # requests in flight at once; 0: no limit
    priority: Priority = "normal"
    models: tuple[str, ...] = ()  # empty: every model
    created: float = 0.0

    def may_use(self, model: str) -> bool:
        return not self.models or model in self.models


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def validate(key: ApiKey) -> None:
    if not NAME.fullmatch(key.name):
        raise InvalidArgument(f"name: {key.name!r} is not 1-64 of A-Z a-z 0-9 . _ -", param="name")
    if key.role == "mesh":
        raise InvalidArgument("role: the mesh's identity is its token (KVMESH_MESH_TOKEN), not a key", param="role")
    for field in ("rpm", "tpm", "max_concurrency"):
        if getattr(key, field) < 0:
            raise InvalidArgument(f"{field}: must be ≥ 0 (0: no limit)", param=field)


class KeyStore:
    def __init__(self, redis: aioredis.Redis, cache_s: float = CACHE_S):
        self.redis = redis
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, ApiKey]] = {}

    async def create(self, key: ApiKey, secret: str | None = None) -> str:
        """Stores `key` under a new secret (or the one given) and returns the secret."""
        validate(key)
        secret = secret or PREFIX + secrets.token_urlsafe(32)
        key = msgspec.structs.replace(key, created=key.created or time.time())
        hashed = digest(secret)
        if not await self.redis.hsetnx(NAMES, key.name, hashed):
            raise FailedPrecondition(f"name: a key named {key.name!r} exists; revoke it first", param="name")
        await self.redis.hset(RECORDS, hashed, msgspec.json.encode(key))
        return secret

    async def ensure(self, key: ApiKey, secret: str) -> None:
        """`key` under exactly `secret`, replacing a key of that name with another secret: how a key
        handed to a service from outside (e.g. the admin key of `kvmesh up`) comes to exist. Several
        gateways starting at once may all do it: whoever loses the race finds it done."""
        if not SECRET.fullmatch(secret):
            raise InvalidArgument(f"key {key.name!r}: a key is 'kvm-' and 32-128 of A-Z a-z 0-9 _ -")
        validate(key)
        key = msgspec.structs.replace(key, created=key.created or time.time())
        if await self.redis.eval(ENSURE, 2, RECORDS, NAMES, key.name, digest(secret), msgspec.json.encode(key)):
            self._cache.clear()

    async def list(self) -> list[ApiKey]:
        records = await self.redis.hvals(RECORDS)
        return sorted((msgspec.json.decode(r, type=ApiKey) for r in records), key=lambda k: k.name)

    async def revoke(self, name: str, missing_ok: bool = False) -> None:
        hashed = await self.redis.hget(NAMES, name)
        if hashed is None:
            if missing_ok:
                return
            raise NotFound(f"name: no key named {name!r}", param="name")
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.hdel(RECORDS, hashed).hdel(NAMES, name).execute()
        self._cache.clear()

    async def lookup(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, or None (unknown or revoked); Unavailable when Redis is."""
        now = time.monotonic()
        cached = self._cache.get(secret)  # by the secret itself: no hashing for a key just seen
        if cached is not None and cached[0] > now:
            return cached[1]
        if not SECRET.fullmatch(secret):
            return None
        hashed = digest(secret)
        try:
            record = await self.redis.hget(RECORDS, hashed)
        except (RedisError, OSError):
            raise Unavailable("API keys cannot be checked: the key store is unreachable; retry") from None
        if record is None:
            self._cache.pop(secret, None)
            return None
        key = msgspec.json.decode(record, type=ApiKey)
        self._cache[secret] = (now + self.cache_s, key)
        return key

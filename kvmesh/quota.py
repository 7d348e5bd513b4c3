"""Per-key quotas from real token counts, shared by every gateway replica through Redis (quota.lua).

A request is admitted with one FCALL (`Quotas.admit`: a request from the key's requests-per-minute
bucket, the prompt's tokens from its tokens-per-minute bucket, a concurrency slot under a lease);
the completion tokens are charged as they stream, at most one FCALL a second (`Metered.completed`);
one FCALL at the end frees the slot and adds the request to the key's hourly usage (`Metered.finish`;
it waits up to RELEASE_LINGER_S for other calls to ride with). A gateway that dies gives its slots
back when their leases run out. A busy key's requests are admitted from a slice of its quota the
gateway leased instead, with no call of their own (kvmesh/quota_lease.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kvmesh.api_keys import ApiKey
from kvmesh.errors import InvalidArgument, ResourceExhausted, Unavailable
from kvmesh.quota_lease import BLOCK_S, LEASE_S, Slice, leasable
from kvmesh.redis_batch import Coalescer

LIBRARY = resources.files("kvmesh").joinpath("quota.lua").read_text()
LIBRARIES = [LIBRARY]
HOUR_FORMAT = "%Y-%m-%dT%H"  # UTC; the suffix of a usage record's key
USAGE_KEPT_HOURS = 35 * 24  # quota.lua's USAGE_TTL_S: no record is older
MAX_USAGE_NAMES = 1000
FLUSH_S = 1.0  # streamed completion tokens are charged at most this often per request
# A release waits up to this long to ride with other calls (kvmesh/redis_batch.py): a key's slot
# frees, and its usage shows, that much later.
RELEASE_LINGER_S = 0.05
log = logging.getLogger(__name__)


def keys(name: str, hour: str = "") -> tuple[str, str, str, str]:
    """A key name's buckets, leases, gateways' blocks and (for `hour`) usage record: one hash tag,
    one cluster slot."""
    tag = f"kvq:{{{name}}}"
    return f"{tag}:buckets", f"{tag}:leases", f"{tag}:blocks", f"{tag}:usage:{hour}"


class RateLimited(ResourceExhausted):
    """Over a key's quota: HTTP 429 / RESOURCE_EXHAUSTED, with Retry-After and the x-ratelimit-* headers."""

    def __init__(self, message: str, headers: dict[str, str]):
        super().__init__(message, code="rate_limit_exceeded", headers=headers)


@dataclass(frozen=True)
class UsageRow:
    name: str
    hour: datetime  # its start, UTC
    model: str
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


class Quotas:
    def __init__(self, client: aioredis.Redis, lease_s: float = 900.0, clock: Callable[[], float] = time.time):
        """`lease_s`: how long a request holds its concurrency slot if its gateway never releases it."""
        self.redis = client
        self._calls = Coalescer(client, LIBRARIES)
        self.lease_s = lease_s
        self.clock = clock
        # Releases run on after a cancelled caller stops waiting; held here so that none is collected.
        self._background: set[asyncio.Task] = set()
        self.holder = uuid.uuid4().hex  # this gateway, as its blocks of slots are named in Redis
        self._slices: dict[str, Slice] = {}
        self._renewer: asyncio.Task | None = None

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def fcall(self, function: str, keys: tuple[str, ...], *args, linger_s: float = 0.0) -> list:
        try:
            return await self._calls.fcall(function, keys, *args, linger_s=linger_s)
        except (RedisConnectionError, RedisTimeoutError) as e:
            raise Unavailable(f"quota store (Redis) unreachable: {e}") from e

    async def admit(self, key: ApiKey, request_id: str, prompt_tokens: int) -> Metered:
        """Takes a request, `prompt_tokens` and a slot from `key`'s quota, or raises RateLimited."""
        if not (key.rpm or key.tpm or key.max_concurrency):
            return Metered(self, key, request_id, prompt_tokens, {})
        if leasable(key) and (leased := await self._admit_leased(key, prompt_tokens)):
            return leased
        now = self.now_ms()
        deadline = now + int(self.lease_s * 1000)
        args = (request_id, now, key.rpm, key.tpm, key.max_concurrency, prompt_tokens, deadline)
        verdict, retry_ms, *figures = await self.fcall("kvmesh_quota_admit", keys(key.name)[:3], *args)
        headers = _ratelimit_headers(key, figures)
        verdict = verdict.decode() if isinstance(verdict, bytes) else verdict
        if verdict == "ok":
            return Metered(self, key, request_id, prompt_tokens, headers)
        if verdict == "prompt":
            raise RateLimited(
                f"key {key.name!r}: a prompt of {prompt_tokens} tokens can never fit its limit of {key.tpm} "
                "tokens per minute; shorten the prompt or raise the key's tpm",
                headers,
            )
        seconds = max(1, math.ceil(retry_ms / 1000))
        used_up = {
            "rpm": f"{key.rpm} requests per minute used up",
            "tpm": f"{key.tpm} tokens per minute used up (this prompt needs {prompt_tokens})",
            "concurrency": f"{key.max_concurrency} requests in flight, its most at once",
        }[verdict]
        raise RateLimited(
            f"key {key.name!r}: {used_up}; retry in {seconds} s", {"Retry-After": str(seconds), **headers}
        )

    async def _admit_leased(self, key: ApiKey, prompt_tokens: int) -> LeasedMetered | None:
        """Admits from this gateway's slice of `key`'s quota, leasing one if it has none or too
        little left; None when Redis grants none (near a limit: the request goes to Redis itself)."""
        held = self._slices.get(key.name)
        if held is None:
            held = self._slices[key.name] = Slice(key)
            if self._renewer is None:
                self._renewer = asyncio.ensure_future(self._renew_every_period())
        held.key = key  # a key revoked and made again under its name has the new one's limits
        if not held.take(prompt_tokens):
            if self.clock() < held.refused_until:
                return None
            await self._renewed(held, prompt_tokens)
            if not held.take(prompt_tokens):
                return None
        return LeasedMetered(self, held, prompt_tokens)

    async def _renewed(self, held: Slice, prompt_tokens: int = 0, want: bool = True) -> None:
        """One renewal of `held` at a time; callers that come while it is out wait for it."""
        if held.renewal is None:
            held.renewal = asyncio.ensure_future(self._renew(held, prompt_tokens, want))
            held.renewal.add_done_callback(lambda _: setattr(held, "renewal", None))
        await asyncio.shield(held.renewal)

    async def _renew(self, held: Slice, prompt_tokens: int, want: bool) -> None:
        """Gives back what `held` did not use, records its usage and, if `want`, leases a new slice."""
        key, now = held.key, self.now_ms()
        wanted = held.wanted(prompt_tokens) if want else (0, 0, 0, 0)
        given_back, usage = held.hand_back()
        block = (self.holder, now, key.rpm, key.tpm, key.max_concurrency, now + int(BLOCK_S * 1000))
        commands = [("FCALL", "kvmesh_quota_lease", 3, *keys(key.name)[:3], *block, *given_back, held.in_use, *wanted)]
        for (model, hour), counts in usage.items():
            commands.append(("FCALL", "kvmesh_quota_usage", 1, keys(key.name, hour)[3], model, *counts))
        try:
            (granted, *answer), *_ = await self._calls.execute(commands)
        except Exception as e:  # noqa: BLE001 - kept to give back at the next renewal; requests go to Redis meanwhile
            held.take_back(given_back, usage)
            held.refused_until = self.clock() + LEASE_S
            log.warning("renewing the slice of key %r failed: %s", key.name, e)
            return
        held.granted(answer[:3], answer[3:])
        if want and not granted:
            held.refused_until = self.clock() + LEASE_S

    async def _renew_every_period(self) -> None:
        while True:
            await asyncio.sleep(LEASE_S)
            await self._renew_all()

    async def _renew_all(self) -> None:
        """Each slice renewed (a new one only for a key used in the period); idle ones dropped."""
        for name, held in list(self._slices.items()):
            if held.idle() and held.empty():
                del self._slices[name]
        renewals = [self._renewed(held, want=held.used_requests > 0) for held in self._slices.values()]
        await asyncio.gather(*renewals, return_exceptions=True)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Sends the releases still pending (a request's `end` is not waited for, and may linger)
        and gives the slices back, then closes the connection: a gateway that stops leaves no slot
        held and no usage unrecorded."""
        if self._renewer is not None:
            self._renewer.cancel()
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)
        if self._slices:
            await asyncio.wait_for(self._renew_all_back(), timeout_s)
        self._calls.wire.close()

    async def _renew_all_back(self) -> None:
        async def give_back(held: Slice) -> None:
            if held.renewal is not None:  # it may lease a slice: give that back too
                await asyncio.shield(held.renewal)
            await self._renewed(held, want=False)

        await asyncio.gather(*(give_back(held) for held in self._slices.values()))

    async def usage(self, names: list[str] | None, hours: int) -> list[UsageRow]:
        """Usage per key, model and hour over the last `hours` hours (this one included), oldest
        first; `names` None: every key that has any."""
        if not 1 <= hours <= USAGE_KEPT_HOURS:
            raise InvalidArgument(f"hours: 1 to {USAGE_KEPT_HOURS} (usage is kept 35 days), not {hours}", param="hours")
        if names is not None and len(names) > MAX_USAGE_NAMES:
            raise InvalidArgument(f"names: at most {MAX_USAGE_NAMES} keys at once", param="names")
        now = datetime.fromtimestamp(self.clock(), UTC).replace(minute=0, second=0, microsecond=0)
        wanted = [(now - timedelta(hours=h)).strftime(HOUR_FORMAT) for h in reversed(range(hours))]
        if names is None:
            found = {_name_of(k) async for k in self.redis.scan_iter(match="kvq:{*}:usage:*", count=1000)}
            names = sorted(found)
        records = [(name, hour) for hour in wanted for name in names]
        pipe = self.redis.pipeline(transaction=False)
        for name, hour in records:
            pipe.hgetall(keys(name, hour)[3])
        rows = []
        for (name, hour), fields in zip(records, await pipe.execute(), strict=True):
            start = datetime.strptime(hour, HOUR_FORMAT).replace(tzinfo=UTC)
            rows += _rows(name, start, fields)
        return rows


def _name_of(usage_key: bytes | str) -> str:
    text = usage_key.decode() if isinstance(usage_key, bytes) else usage_key
    return text[text.index("{") + 1 : text.index("}")]


def _rows(name: str, hour: datetime, fields: dict) -> list[UsageRow]:
    by_model: dict[str, dict[str, int]] = {}
    for field, value in fields.items():
        model, _, what = (field.decode() if isinstance(field, bytes) else field).rpartition("|")
        by_model.setdefault(model, {})[what] = int(value)
    return [
        UsageRow(
            name,
            hour,
            model,
            f.get("requests", 0),
            f.get("prompt_tokens", 0),
            f.get("cached_tokens", 0),
            f.get("completion_tokens", 0),
        )
        for model, f in sorted(by_model.items())
    ]


class Metered:
    """One admitted request: charges its streamed tokens and, at `finish`, releases it."""

    def __init__(self, quotas: Quotas, key: ApiKey, request_id: str, prompt_tokens: int, headers: dict[str, str]):
        self.quotas = quotas
        self.key = key
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.headers = headers  # x-ratelimit-* for the response
        self.charged = 0  # completion tokens charged, or being charged, so far
        self._counted = 0  # completion tokens reported by completed()
        self._last_flush = quotas.clock()
        self._flush: asyncio.Task | None = None
        self._finish: asyncio.Task | None = None

    def completed(self, n: int) -> None:
        """`n` more completion tokens streamed; charged in the background, at most once a second."""
        self._counted += n
        if not self.key.tpm or self._finish or (self._flush and not self._flush.done()):
            return
        now = self.quotas.clock()
        if now - self._last_flush >= FLUSH_S:
            self._last_flush = now
            self._flush = asyncio.ensure_future(self._charge(self._counted - self.charged))

    async def _charge(self, tokens: int) -> None:
        self.charged += tokens
        try:
            now = self.quotas.now_ms()
            await self.quotas.fcall("kvmesh_quota_charge", keys(self.key.name)[:2], tokens, self.key.tpm, now)
        except Exception as e:  # noqa: BLE001 - finish() charges these again; the stream goes on
            self.charged -= tokens
            log.warning("charging %s tokens to key %r failed: %s", tokens, self.key.name, e)

    async def finish(self, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> None:
        """Frees the slot, charges what is still uncharged and records the usage; only the first
        call counts. Safe in a `finally`: a cancelled caller stops waiting, the release still runs."""
        self.end(model, prompt_tokens, cached_tokens, completion_tokens)
        await asyncio.shield(self._finish)

    def end(self, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> None:
        """finish(), not waited for: an answer need not wait for Redis to hear it ended."""
        if self._finish is None:
            self._finish = asyncio.ensure_future(self._release(model, prompt_tokens, cached_tokens, completion_tokens))
            self.quotas._background.add(self._finish)
            self._finish.add_done_callback(self.quotas._background.discard)

    async def _release(self, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> None:
        if self._flush:
            await self._flush  # never raises; after it, `charged` is what Redis has
        # The usage's counts are the truth; admission took the prompt as tokenized, the charges the stream.
        owed = max(completion_tokens - self.charged, 0) + max(prompt_tokens - self.prompt_tokens, 0)
        hour = hour_of(self.quotas.clock())
        args = (self.request_id, self.quotas.now_ms(), owed, self.key.tpm, model)
        counts = (prompt_tokens, cached_tokens, completion_tokens)
        try:
            await self.quotas.fcall(
                "kvmesh_quota_release", keys(self.key.name, hour), *args, *counts, linger_s=RELEASE_LINGER_S
            )
        except Exception as e:  # noqa: BLE001 - runs in a finally; the lease frees the slot in the end
            log.warning("releasing request %s of key %r failed: %s", self.request_id, self.key.name, e)


class LeasedMetered:
    """A request admitted from a leased slice: its tokens and its end are counted in the slice."""

    def __init__(self, quotas: Quotas, held: Slice, prompt_tokens: int):
        self.quotas = quotas
        self.held = held
        self.prompt_tokens = prompt_tokens
        self.headers = _ratelimit_headers(held.key, held.headers_figures())
        self.charged = 0
        self._ended = False

    def completed(self, n: int) -> None:
        self.charged += n
        self.held.charge(n)

    async def finish(self, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> None:
        self.end(model, prompt_tokens, cached_tokens, completion_tokens)

    def end(self, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> None:
        if self._ended:
            return
        self._ended = True
        self.held.charge(max(completion_tokens - self.charged, 0) + max(prompt_tokens - self.prompt_tokens, 0))
        self.held.release(model, hour_of(self.quotas.clock()), prompt_tokens, cached_tokens, completion_tokens)


@functools.lru_cache(maxsize=4)
def _hour_named(hours_since_epoch: int) -> str:
    return datetime.fromtimestamp(hours_since_epoch * 3600, UTC).strftime(HOUR_FORMAT)


def hour_of(t: float) -> str:
    """The usage record's hour (UTC) of time `t`; formatted once an hour, not once a request."""
    return _hour_named(int(t // 3600))


def _ratelimit_headers(key: ApiKey, figures: list[int]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers, for the limits `key` has."""
    headers = {}
    for kind, limit, (_, remaining, reset_ms) in (
        ("requests", key.rpm, figures[0:3]),
        ("tokens", key.tpm, figures[3:6]),
    ):
        if limit:
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            headers[f"x-ratelimit-reset-{kind}"] = duration(reset_ms)
    return headers


def duration(ms: int) -> str:
    """A duration as OpenAI writes it (Go's): 20ms, 1s, 8.64s, 6m0s, 1h2m3.5s."""
    if ms < 1000:
        return f"{ms}ms" if ms > 0 else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    return f"{minutes}m{seconds}" if minutes else seconds

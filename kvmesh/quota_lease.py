"""A gateway's leased slice of a busy key's quota (quota.lua's `lease`): requests admitted from it
cost no Redis call, and their ends none either.

A slice is a few requests, tokens and spare concurrency slots taken from the key's buckets in Redis
(so no gateway can admit more than the key's limits between them), sized by what this gateway used
in the last period. Every LEASE_S the gateway gives back what it did not use, reports the slots
still in use (its "block") and the usage of the requests it ended, and asks for a new slice if the
key was busy. Redis grants a slice only while a quarter of each limit stays free and never more
than 1/64 of one, so near a limit every gateway admits each request through Redis again; what
another gateway's slice still holds then is at most 1/64 of each limit, for at most LEASE_S.
Keys whose limits are under 64 never lease: with so few requests to share, each one counts.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from kvmesh.api_keys import ApiKey

LEASE_S = 1.0  # how often a slice is renewed: its unused part given back, its usage recorded
BLOCK_S = 5 * LEASE_S  # a block not renewed for this long (its gateway died) frees its slots
SLICES = 64  # quota.lua's: a slice is at most this fraction of a limit
MIN_WANTED = 4  # requests asked for at a key's first slice


def leasable(key: ApiKey) -> bool:
    limits = [n for n in (key.rpm, key.tpm, key.max_concurrency) if n]
    return bool(limits) and min(limits) >= SLICES


def _usage_record() -> list[int]:
    return [0, 0, 0, 0]  # requests, prompt, cached, completion tokens


@dataclass
class Slice:
    """What this gateway holds of one key's quota. Counts of a limit the key lacks are never used."""

    key: ApiKey
    requests: int = 0
    tokens: int = 0  # negative: completion tokens past the slice, owed at the next renewal
    spare_slots: int = 0
    in_use: int = 0  # slots of the block taken by requests running now
    figures: list[int] = field(default_factory=lambda: [0] * 6)  # Redis's x-ratelimit figures at the renewal
    refused_until: float = 0.0  # Redis granted no slice: admit through Redis until then
    # This period's use, for the next slice's size, and its usage by (model, hour).
    used_requests: int = 0
    used_tokens: int = 0
    peak_in_use: int = 0
    usage: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(_usage_record))
    renewal: asyncio.Future | None = None

    def take(self, prompt_tokens: int) -> bool:
        """Admits a request from the slice if it has room for it."""
        key = self.key
        if (
            (key.rpm and self.requests < 1)
            or (key.tpm and self.tokens < prompt_tokens)
            or (key.max_concurrency and self.spare_slots < 1)
        ):
            return False
        self.requests -= 1
        self.tokens -= prompt_tokens
        self.spare_slots -= 1
        self.in_use += 1
        self.used_requests += 1
        self.used_tokens += prompt_tokens
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        return True

    def charge(self, tokens: int) -> None:
        self.tokens -= tokens
        self.used_tokens += tokens

    def release(self, model: str, hour: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> None:
        self.in_use -= 1
        self.spare_slots += 1  # the block keeps the slot until the renewal gives it back
        record = self.usage[model, hour]
        record[0] += 1
        record[1] += prompt_tokens
        record[2] += cached_tokens
        record[3] += completion_tokens

    def idle(self) -> bool:
        """Nothing ran in the period and nothing runs now."""
        return not (self.in_use or self.used_requests or self.usage)

    def empty(self) -> bool:
        """Holds nothing of the key's limits to give back."""
        key = self.key
        held = (key.rpm and self.requests > 0, key.tpm and self.tokens, key.max_concurrency and self.spare_slots)
        return not any(held)

    def wanted(self, prompt_tokens: int) -> tuple[int, int, int, int]:
        """Requests, tokens and spare slots to ask for (twice this period's use, at least
        MIN_WANTED requests), and the tokens the request waiting needs (`prompt_tokens`)."""
        requests = max(MIN_WANTED, 2 * self.used_requests)
        tokens = max(2 * self.used_tokens, requests * prompt_tokens)
        return requests, tokens, max(MIN_WANTED, 2 * self.peak_in_use), max(prompt_tokens, 1)

    def hand_back(self) -> tuple[tuple[int, int], dict[tuple[str, str], list[int]]]:
        """Empties the slice for a renewal: the requests and tokens it gives back (tokens may be
        negative) and the usage to record; the period starts again. Spare slots go too: the
        renewal sets the block to the slots in use and those granted anew."""
        given_back = (max(self.requests, 0), self.tokens)
        usage = self.usage
        self.requests = self.tokens = self.spare_slots = 0
        self.usage = defaultdict(_usage_record)
        self.used_requests = self.used_tokens = 0
        self.peak_in_use = self.in_use
        return given_back, usage

    def take_back(self, given_back: tuple[int, int], usage: dict[tuple[str, str], list[int]]) -> None:
        """A renewal that failed: what it was to give back and record is kept for the next one."""
        self.requests += given_back[0]
        self.tokens += given_back[1]
        for where, counts in usage.items():
            self.usage[where] = [a + b for a, b in zip(self.usage[where], counts, strict=True)]

    def granted(self, sliced: list[int], figures: list[int]) -> None:
        requests, tokens, spare_slots = sliced
        self.requests += requests
        self.tokens += tokens
        self.spare_slots += spare_slots
        self.figures = figures

    def headers_figures(self) -> list[int]:
        """Redis's figures at the renewal, with what is left of the slice counted as remaining."""
        figures = list(self.figures)
        if figures[0]:
            figures[1] += max(self.requests, 0)
        if figures[3]:
            figures[4] += max(self.tokens, 0)
        return figures

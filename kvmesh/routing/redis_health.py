"""Whether the router's Redis (KV index and shared load) answers; every transition is logged once
and exported, so an operator sees when routing fell back to load only."""

from __future__ import annotations

import logging

from prometheus_client import Gauge

log = logging.getLogger(__name__)
REACHABLE = Gauge("kvmesh_router_redis_reachable", "1 when the KV index and shared load answer")


class RedisHealth:
    def __init__(self) -> None:
        self.reachable = True
        REACHABLE.set(1)

    def ok(self) -> None:
        if not self.reachable:
            log.info("Redis answers again: KV-aware routing and shared load are back")
        self.reachable = True
        REACHABLE.set(1)

    def failed(self, error: Exception) -> None:
        if self.reachable:
            log.warning("Redis unreachable (%s): routing by this router's own load, without KV overlap", error)
        self.reachable = False
        REACHABLE.set(0)

"""Keeps one Subscription per live worker that publishes KV events; purges workers that leave, and
at start-up those that died while no kvindex ran. A worker id outside kvmesh.worker_ids' rule
(a record written to the registry by hand) is refused: never subscribed, never purged by name."""

from __future__ import annotations

import asyncio
import logging

import zmq.asyncio

from kvmesh import worker_ids
from kvmesh.block_index import BlockIndex
from kvmesh.registry import Watcher
from services.kvindex import metrics
from services.kvindex.subscription import Limits, Subscription

log = logging.getLogger(__name__)


class Ingestor:
    def __init__(self, workers: Watcher, index: BlockIndex, retry_s: float, limits: Limits):
        self.workers = workers
        self.index = index
        self.retry_s = retry_s
        self.limits = limits
        self.ctx = zmq.asyncio.Context()
        self.subscriptions: dict[str, Subscription] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._loop_task: asyncio.Task | None = None
        self._epoch: str | None = None
        self._wake = asyncio.Event()  # the worker set changed, or a subscription ended
        self._refused: set[str] = set()  # ids already logged as refused

    async def start(self) -> None:
        self.workers.on_change(self._wake.set)
        await self.purge_dead()
        await self.sync()
        self._loop_task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.sync()
            if any(task.done() for task in self._tasks.values()):
                self._wake.set()  # not restarted (the registry is unreachable): try again
            await asyncio.sleep(self.retry_s)

    async def purge_dead(self) -> None:
        """Drops the blocks of every worker not in the registry. Skipped when the registry cannot
        be read: its view would be empty, and the live workers' blocks are purged as they are
        subscribed anyway."""
        if not self.workers.reachable:
            log.warning("registry unreachable at start: stale index entries of dead workers stay")
            return
        try:
            removed = await self.index.purge_all_but(self.workers.workers.keys())
        except Exception as e:  # noqa: BLE001 - Redis down: the next start tries again
            log.warning("could not purge the index entries of dead workers: %s", e)
            return
        for worker_id, blocks in sorted(removed.items()):
            log.info("worker %s is not in the registry: purged its %d blocks", worker_id, blocks)

    async def sync(self) -> None:
        if not self.workers.reachable:
            return  # the registry's view is stale: neither start nor purge on it
        if self._epoch is not None and self.workers.epoch != self._epoch:
            # Redis came back empty: the index is gone too; subscribe afresh, each replaying its buffer.
            log.warning("registry reset: resubscribing to all %d workers to rebuild the index", len(self._tasks))
            await self._cancel(list(self._tasks))
        self._epoch = self.workers.epoch
        live = {wid: w.record for wid, w in self.workers.workers.items() if w.record.kv_events_endpoint}
        for refused in [wid for wid in live if not worker_ids.valid(wid)]:
            del live[refused]
            if refused not in self._refused:
                self._refused.add(refused)
                log.warning("worker %r refused: a worker id is %s", refused, worker_ids.RULE)
        for worker_id in self.subscriptions.keys() - live.keys():
            await self._drop(worker_id)
        for worker_id, record in live.items():
            task = self._tasks.get(worker_id)
            if task is None or task.done():
                if task is not None:
                    _log_end(worker_id, task)
                subscription = self.subscriptions[worker_id] = Subscription(self.ctx, record, self.index, self.limits)
                self._tasks[worker_id] = task = asyncio.create_task(subscription.run())
                task.add_done_callback(lambda _: self._wake.set())
                log.info("subscribed to %s's KV events at %s", worker_id, record.kv_events_endpoint)

    async def _cancel(self, worker_ids: list[str]) -> None:
        tasks = [self._tasks.pop(worker_id) for worker_id in worker_ids]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for worker_id in worker_ids:
            del self.subscriptions[worker_id]

    async def _drop(self, worker_id: str) -> None:
        await self._cancel([worker_id])
        metrics.forget_worker(worker_id)
        try:
            removed = await self.index.purge(worker_id)
            log.info("worker %s left: purged its %d blocks", worker_id, removed)
        except Exception as e:  # noqa: BLE001 - Redis down: the next kvindex start purges it
            log.warning("worker %s left; purge failed: %s", worker_id, e)

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), *(t for t in [self._loop_task] if t), return_exceptions=True)
        self.ctx.term()


def _log_end(worker_id: str, task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("worker %s: KV-event subscription failed (%s); resubscribing", worker_id, task.exception())

"""KV-event ingestion: block events/s through kvindex into one Redis, and event-to-visible lag.

    .venv/bin/python -m bench.ingestion [--workers 4] [--blocks-per-message 32] [--seconds 10]

A real redis-server and a real kvindex process; the workers are registry records whose KV-event
endpoints are ZMQ publishers in this process, sending vLLM-format BlockStored batches (chained
prefixes; 16-token blocks). Phase 1 publishes as fast as it can and reports what kvindex applied
per second; phase 2 publishes at half that rate and reports the lag (event timestamp → applied in
Redis) p50/p99 from kvindex's Stats.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

import grpc
import redis.asyncio as aioredis
import zmq

from bench.common import save, start_service, stop
from kvmesh import kv_events, registry
from kvmesh.net import free_ports
from kvmesh.redis_server import RedisServer
from kvmesh.v1 import kvindex_pb2, kvindex_pb2_grpc, worker_pb2

BLOCK = 16


POOL = 512


class Publisher:
    """One fake worker's stream: a pool of BlockStored messages (chained prefixes,
    `per_message` blocks each), made once and sent round and round with fresh sequence numbers,
    so that this process can outpace kvindex. Re-storing a block costs kvindex the same work."""

    def __init__(self, ctx: zmq.Context, endpoint: str, per_message: int, seed: int):
        self.socket = ctx.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.bind(endpoint)
        self.per_message = per_message
        rng = random.Random(seed)
        self.events, parent = [], None
        for i in range(POOL):
            if i % 8 == 0:
                parent = None  # a new prefix every 8 messages
            hashes = [(seed << 40) + i * per_message + j for j in range(per_message)]
            tokens = [rng.randrange(32000) for _ in range(per_message * BLOCK)]
            self.events.append(
                kv_events.BlockStored(hashes, parent, tokens, BLOCK, lora_id=None, medium="GPU", lora_name=None)
            )
            parent = hashes[-1]
        self.payloads = [kv_events.encode(b"", 0, kv_events.EventBatch(0.0, [e]))[2] for e in self.events]
        self.seq = 0
        self.blocks_sent = 0

    def send(self, fresh_timestamp: bool) -> None:
        i = self.seq % POOL
        if fresh_timestamp:
            frames = kv_events.encode(b"", self.seq, kv_events.EventBatch(time.time(), [self.events[i]]))
        else:
            frames = [b"", self.seq.to_bytes(8, "big"), self.payloads[i]]
        self.socket.send_multipart(frames)
        self.seq += 1
        self.blocks_sent += self.per_message


def stats(stub) -> kvindex_pb2.StatsResponse:
    return stub.Stats(kvindex_pb2.StatsRequest())


def applied(stub) -> int:
    return sum(w.events for w in stats(stub).workers)


def publish(publishers: list[Publisher], seconds: float, rate_blocks_s: float | None) -> None:
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        for p in publishers:
            p.send(fresh_timestamp=rate_blocks_s is not None)
        if rate_blocks_s:
            sent = sum(p.blocks_sent for p in publishers)
            ahead = sent / rate_blocks_s - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--blocks-per-message", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    redis_port, kvindex_port = free_ports(2)
    server = RedisServer(redis_port).start()
    ctx = zmq.Context()
    tmp = Path(f"/tmp/kvmesh-ingest-{redis_port}")
    tmp.mkdir(exist_ok=True)
    publishers = [
        Publisher(ctx, f"ipc://{tmp}/w{i}.sock", args.blocks_per_message, seed=i + 1) for i in range(args.workers)
    ]
    kvindex = None
    try:

        async def register() -> None:
            client = aioredis.Redis.from_url(server.url)
            for i in range(args.workers):
                record = worker_pb2.WorkerRecord(
                    id=f"w{i}", model="m", kv_block_size=BLOCK, kv_events_endpoint=f"ipc://{tmp}/w{i}.sock"
                )
                await registry.Registry(client).register(record, lease_ms=3_600_000)
            await client.aclose()

        asyncio.run(register())
        kvindex = start_service("kvindex", kvindex_port, server.url)
        channel = grpc.insecure_channel(f"127.0.0.1:{kvindex_port}")
        stub = kvindex_pb2_grpc.KvIndexStub(channel)
        while len(stats(stub).workers) < args.workers:  # subscribed
            time.sleep(0.1)
        time.sleep(0.5)  # ZMQ's slow joiner

        before, t0 = applied(stub), time.perf_counter()
        publish(publishers, args.seconds, None)
        sent = sum(p.blocks_sent for p in publishers)
        # kvindex drains its backlog; what a full ZMQ queue dropped never arrives, so the end is
        # when the applied count stops moving, and the rate is taken up to its last move.
        last, last_change = applied(stub), time.perf_counter()
        while time.perf_counter() - last_change < 1.0:
            time.sleep(0.25)  # Stats costs kvindex time too: not too often
            if (now := applied(stub)) != last:
                last, last_change = now, time.perf_counter()
        drained = last - before
        throughput = drained / (last_change - t0)

        for p in publishers:
            p.blocks_sent = 0
        # Long enough that kvindex's lag window (10 s) holds only these fresh-stamped events.
        publish(publishers, max(args.seconds, 12.0), throughput / 2)
        time.sleep(1.0)
        final = stats(stub)
        result = {
            "workers": args.workers,
            "blocks_per_message": args.blocks_per_message,
            "saturated_block_events_per_s": round(throughput),
            "blocks_sent": sent,
            "blocks_applied": drained,
            "blocks_dropped_by_zmq_queues": sent - drained,
            "lag_at_half_rate_ms": {"p50": round(final.lag_ms_p50, 2), "p99": round(final.lag_ms_p99, 2)},
            "resyncs": sum(w.resyncs for w in final.workers),
        }
    finally:
        stop(kvindex)
        for p in publishers:
            p.socket.close(linger=0)
        ctx.term()
        server.stop()
    save("ingestion", result)


if __name__ == "__main__":
    main()

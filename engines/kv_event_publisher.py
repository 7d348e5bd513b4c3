"""Publishes KV events the way vLLM's ZmqEventPublisher does: a PUB socket sending
`[topic, seq, msgpack(batch)]` and a ROUTER answering replay requests from a bounded buffer.
Used by engines that are not vLLM (the simulated engine), so kvindex cannot tell them apart."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import zmq

from kvmesh import kv_events

log = logging.getLogger(__name__)


class KvEventPublisher:
    def __init__(self, endpoint: str, replay_endpoint: str | None, buffer_steps: int = 10_000, topic: str = ""):
        self._ctx = zmq.Context()
        self._topic = topic.encode()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(endpoint)
        self._buffer: deque[list[bytes]] = deque(maxlen=buffer_steps)
        self._lock = threading.Lock()
        self._seq = 0
        self._running = True
        self._replay_thread = None
        if replay_endpoint:
            self._replay_thread = threading.Thread(target=self._serve_replay, args=(replay_endpoint,), daemon=True)
            self._replay_thread.start()

    def publish(self, events: list[kv_events.Event]) -> None:
        """From one thread at a time (the engine's loop)."""
        if not events:
            return
        frames = kv_events.encode(self._topic, self._seq, kv_events.EventBatch(time.time(), events))
        self._seq += 1
        with self._lock:
            self._buffer.append(frames)
        self._pub.send_multipart(frames, copy=False)

    def _serve_replay(self, endpoint: str) -> None:
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(endpoint)
        try:
            while self._running:
                if not router.poll(100):
                    continue
                frames = router.recv_multipart()
                if len(frames) != 3:
                    log.warning("bad replay request (%d frames)", len(frames))
                    continue
                client, _, start = frames
                with self._lock:
                    wanted = [f for f in self._buffer if int.from_bytes(f[1], "big") >= int.from_bytes(start, "big")]
                for batch in wanted:
                    router.send_multipart([client, b"", *batch])
                router.send_multipart([client, b"", b"", kv_events.END_SEQ, b""])
        finally:
            router.close()

    def close(self) -> None:
        self._running = False
        if self._replay_thread:
            self._replay_thread.join(timeout=2)
        self._pub.close()
        self._ctx.term()

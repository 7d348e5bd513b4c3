"""The engine's KV events, republished on TCP at the worker's own address for a kvindex on another
host. vLLM's publisher binds only ipc:// or a wildcard TCP address (a concrete tcp:// address makes
it connect instead), and a wildcard would listen on every interface: so the engine publishes on
ipc:// in this host's /tmp, and the relay subscribes there and binds only the worker's address.

Live events go through an XSUB→XPUB pair (subscriptions flow back up). A replay request (vLLM's:
`[client, b"", start seq]` at a ROUTER) is passed to the engine's replay ROUTER and its answers back
to the asker, up to the END_SEQ frame; one request at a time, as the engine answers them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import zmq
import zmq.asyncio

from kvmesh import kv_events
from kvmesh.net import bracketed, hostport

log = logging.getLogger("kvmesh.worker")
REPLAY_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Endpoints:
    events: str
    replay: str


class KvEventsRelay:
    def __init__(self, engine: Endpoints, host: str, advertise_host: str, port: int = 0, replay_port: int = 0):
        """Binds `host`:`port` (0: a free port) for the events and `replay_port` for the replay;
        `public` names them at `advertise_host`."""
        self.engine = engine
        self._ctx = zmq.asyncio.Context()
        self._xsub = self._socket(zmq.XSUB)
        self._xpub = self._socket(zmq.XPUB)
        self._router = self._socket(zmq.ROUTER)
        self._xsub.connect(engine.events)
        ports = self._bind(self._xpub, host, port), self._bind(self._router, host, replay_port)
        self.public = Endpoints(*(f"tcp://{hostport(advertise_host, p)}" for p in ports))

    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IPV6, 1)
        return sock

    @staticmethod
    def _bind(sock: zmq.asyncio.Socket, host: str, port: int) -> int:
        if port:
            sock.bind(f"tcp://{hostport(host, port)}")
            return port
        return sock.bind_to_random_port(f"tcp://{bracketed(host)}")

    async def run(self) -> None:
        """Relays until cancelled; raises what stopped it otherwise. Closes the sockets either way."""
        tasks = [
            asyncio.create_task(self._forward(self._xsub, self._xpub)),
            asyncio.create_task(self._forward(self._xpub, self._xsub)),  # subscriptions, upstream
            asyncio.create_task(self._serve_replay()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._ctx.destroy(linger=0)

    @staticmethod
    async def _forward(source: zmq.asyncio.Socket, sink: zmq.asyncio.Socket) -> None:
        while True:
            await sink.send_multipart(await source.recv_multipart(copy=False), copy=False)

    async def _serve_replay(self) -> None:
        while True:
            frames = await self._router.recv_multipart()
            if len(frames) != 3:
                log.warning("KV-event relay: dropped a replay request of %d frames", len(frames))
                continue
            try:
                await self._replay(frames[0], frames[2])
            except (TimeoutError, zmq.ZMQError) as e:
                # The asker times out too and falls back to a clean start: nothing to answer.
                log.warning("KV-event relay: the engine did not answer a replay request: %s", e)

    async def _replay(self, client: bytes, start: bytes) -> None:
        dealer = self._socket(zmq.DEALER)
        dealer.connect(self.engine.replay)
        try:
            await dealer.send_multipart([b"", start])
            while True:
                answer = await asyncio.wait_for(dealer.recv_multipart(), REPLAY_TIMEOUT_S)
                await self._router.send_multipart([client, *answer])
                if len(answer) == 4 and answer[2] == kv_events.END_SEQ:
                    return
        finally:
            dealer.close()

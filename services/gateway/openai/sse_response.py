"""An SSE answer whose writes have a deadline (services/gateway/slow_clients.py says why).

uvicorn's `send` waits, with no limit, while the connection's transport holds more than its
high-water mark (64 KiB) that the kernel has not taken; the kernel takes up to the socket's send
buffer first (autotuned up to net.ipv4.tcp_wmem's maximum, 4 MiB by default). A send that waits
longer than the write timeout ends the request: the events' generator is closed (and with it the
request's chunks), and the response is left unfinished, so uvicorn closes the connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Message, Send

from services.gateway.slow_clients import WriteWatch, cut_off


class SseResponse(StreamingResponse):
    def __init__(
        self, events: AsyncGenerator[str, None], request_id: str, write_timeout_s: float, headers: Mapping[str, str]
    ):
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.events = events
        self.request_id = request_id
        self.write_timeout_s = write_timeout_s

    async def stream_response(self, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None

        def late() -> None:
            cut_off("http", self.request_id, self.write_timeout_s)
            task.cancel()  # the send waiting: taken back below, as asyncio.timeout does

        watch = WriteWatch(self.write_timeout_s, late)

        async def sent(message: Message) -> None:
            watch.writing()
            await send(message)
            watch.written()

        try:
            await sent({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for event in self.events:
                await sent({"type": "http.response.body", "body": event.encode(), "more_body": True})
            await sent({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.late:
                raise  # the client left (Starlette's disconnect listener), or the server stops
            task.uncancel()
            await self.events.aclose()  # suspended at its yield: the request ends now, not when collected
        finally:
            watch.close()

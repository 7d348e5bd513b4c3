"""A thread that makes the blocking calls to Triton (sending a response, asking whether a request
was cancelled) so that the engine's event loop never waits on Triton's IPC.

Python-backend `send()` returns only when the server has taken the response; done on the loop
that also drains vLLM's outputs, every token of every request would queue behind every other's
IPC round trip. Calls run in order, so one request's responses stay in order.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, name: str = "triton-outbox"):
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, call: Callable[[], None]) -> None:
        self._calls.put(call)

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                call()
            except Exception:  # one failed send must not stop the others
                log.exception("a call to Triton failed")

    def close(self, timeout_s: float = 10.0) -> None:
        self._calls.put(None)
        self._thread.join(timeout_s)

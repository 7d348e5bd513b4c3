"""A thread that makes the blocking calls to Triton (sending a response, asking whether a request
was cancelled) so that the engine's event loop never waits on Triton's IPC.

Python-backend `send()` returns only when the server has taken the response; done on the loop
that also drains vLLM's outputs, every token of every request would queue behind every other's
IPC round trip. Calls run in order. Each call's future lets a request wait for its own previous
response before the next, and while it waits vLLM merges that request's new tokens into one
delta: under load, fewer and larger responses instead of a growing queue.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, name: str = "triton-outbox"):
        self._calls: queue.SimpleQueue[tuple[Future, Callable[[], object]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, call: Callable[[], object]) -> Future:
        future: Future = Future()
        self._calls.put((future, call))
        return future

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue  # its request was cancelled meanwhile
            try:
                future.set_result(call())
            except Exception as e:  # one failed send must not stop the others
                log.exception("a call to Triton failed")
                future.set_exception(e)

    def close(self, timeout_s: float = 10.0) -> None:
        self._calls.put(None)
        self._thread.join(timeout_s)

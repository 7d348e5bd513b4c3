import asyncio
import time


def wait_for(condition, timeout_s=20.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout_s}s"
        time.sleep(0.1)


async def wait_until(condition, timeout_s: float = 2.0, poll_s: float = 0.005) -> None:
    """wait_for inside an event loop (raises TimeoutError)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(poll_s)

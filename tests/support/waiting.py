import time


def wait_for(condition, timeout_s=20.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout_s}s"
        time.sleep(0.1)

import threading

import pytest

from engines.outbox import Outbox


def test_calls_run_in_order_off_the_caller_thread():
    outbox, seen = Outbox(), []
    futures = [outbox.put(lambda i=i: seen.append((i, threading.current_thread().name))) for i in range(50)]
    for f in futures:
        f.result(timeout=5)
    outbox.close()
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"triton-outbox"}


def test_a_failing_call_fails_its_future_only():
    outbox = Outbox()
    bad = outbox.put(lambda: 1 / 0)
    good = outbox.put(lambda: None)
    with pytest.raises(ZeroDivisionError):
        bad.result(timeout=5)
    assert good.result(timeout=5) is None
    outbox.close()


def test_a_cancelled_call_is_skipped():
    outbox, ran = Outbox(), []
    gate = threading.Event()
    outbox.put(lambda: gate.wait(5))
    skipped = outbox.put(lambda: ran.append("skipped"))
    assert skipped.cancel()
    gate.set()
    outbox.put(lambda: ran.append("next")).result(timeout=5)
    outbox.close()
    assert ran == ["next"]

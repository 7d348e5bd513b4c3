"""The engine wire's mux messages: named fields, the same compact arrays on the wire as the
positional lists they replaced, batches read back whether or not they hold an error, and several
requests sent as one read back as sent."""

import json

import msgspec
import pytest

from kvmesh.engine_wire import (
    EngineDelta,
    MuxDelta,
    MuxError,
    MuxRequest,
    decode_batch,
    decode_requests,
    encode_batch,
    encode_requests,
)

DELTA = EngineDelta([5, 6], "stop", 7, 3, {"remote_port": 1, "remote_host": "127.0.0.1"})


def positional(batch):
    """The batch as the mux wrote it when its entries were plain lists."""
    return json.dumps(
        [[rid, d] if isinstance(d, str) else
         [rid, d.token_ids, d.finish_reason, d.prompt_tokens, d.cached_tokens, d.kv_transfer_params]
         for rid, d in batch]
    )  # fmt: skip


@pytest.mark.parametrize(
    "batch",
    [
        [("r1", DELTA), ("r2", "engine error: boom")],
        [("r1", EngineDelta([1], None, 7, 3))],
        [("r1", EngineDelta([], "abort", 7, 0))],
        [],
    ],
)
def test_the_encoding_is_the_positional_arrays_it_replaced(batch):
    entries = [MuxError(rid, d) if isinstance(d, str) else MuxDelta.of(rid, d) for rid, d in batch]
    payload = encode_batch(entries)
    # The same JSON value, element for element; the bytes differ only in the separators' spaces.
    assert json.loads(payload) == json.loads(positional(batch))
    assert payload == json.dumps(json.loads(positional(batch)), separators=(",", ":")).encode()
    assert decode_batch(positional(batch).encode()) == decode_batch(payload) == entries


def test_a_batch_carries_every_field_of_each_delta_and_the_end_is_null():
    assert json.loads(encode_batch([MuxDelta.of("r1", DELTA), MuxError("r2", "boom")])) == [
        ["r1", [5, 6], "stop", 7, 3, {"remote_port": 1, "remote_host": "127.0.0.1"}],
        ["r2", "boom"],
    ]
    assert encode_batch(None) == b"null" and decode_batch(b"null") is None


def test_entries_read_back_as_named_fields():
    batch = decode_batch(b'[["r1",[5,6],"stop",7,3,null],["r2","boom"]]')
    assert batch == [MuxDelta("r1", [5, 6], "stop", 7, 3, None), MuxError("r2", "boom")]
    assert batch[0].delta() == EngineDelta([5, 6], "stop", 7, 3)
    assert MuxDelta.of("r1", DELTA).delta() == DELTA


def test_requests_sent_as_one_are_msgpack_arrays_read_back_as_sent():
    requests = [
        MuxRequest("r1", b"\x01\x00\x00\x00", b'{"max_tokens":4}', None, {"traceparent": "00-a-b-01"}),
        MuxRequest("r2", b"", b"{}", b"{}", {"response_interval_ms": 250}),
    ]
    payload = encode_requests(requests)
    assert msgspec.msgpack.decode(payload)[0] == ["r1", *msgspec.structs.astuple(requests[0])[1:]]
    assert decode_requests(payload) == requests
    with pytest.raises(msgspec.DecodeError):
        decode_requests(msgspec.msgpack.encode([["r1", "not bytes"]]))

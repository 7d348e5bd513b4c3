"""The OpenAI answers' bytes: a whole answer is what JSONResponse makes, and every SSE event is
`data: ` + json.dumps of its chunk, whatever the text holds (quotes, controls, non-ASCII)."""

import json

import pytest
from fastapi.responses import JSONResponse

from services.gateway.generation import Chunk, Usage
from services.gateway.openai.serving import CHAT, COMPLETION, SseEvents, json_response

TEXTS = ["", "hello", ' "quoted" \\ back', "é 😀 \u2028 \x00 \x1f \x7f", "</script>\n\t"]
MODEL = 'model "é"'


@pytest.mark.parametrize("fmt", [CHAT, COMPLETION], ids=["chat", "completion"])
@pytest.mark.parametrize("text", TEXTS)
def test_every_event_is_json_dumps_of_its_chunk(fmt, text):
    events = SseEvents(fmt, "rid-1", 1700000000, MODEL)
    usage = Usage(830, 16, 800)
    for chunk, first in [
        (Chunk(text, [1]), True),
        (Chunk(text, [2]), False),
        (Chunk(text, [3], "length", usage), False),
        (Chunk(text, [3], "stop", usage), True),
    ]:
        expected = f"data: {json.dumps(fmt.chunk('rid-1', 1700000000, MODEL, chunk, first))}\n\n"
        assert events.chunk(chunk, first) == expected
    assert events.usage(usage) == f"data: {json.dumps(fmt.usage_chunk('rid-1', 1700000000, MODEL, usage))}\n\n"


@pytest.mark.parametrize("text", TEXTS)
def test_a_whole_answer_is_what_json_response_makes(text):
    body = CHAT.whole("rid-1", 1700000000, MODEL, text, "length", Usage(830, 16, 800))
    headers = {"x-ratelimit-remaining-requests": "9", "x-kvmesh-queue-ms": "0.0"}
    ours, theirs = json_response(body, headers), JSONResponse(body, headers=headers)
    assert ours.body == theirs.body and ours.raw_headers == theirs.raw_headers and ours.status_code == 200

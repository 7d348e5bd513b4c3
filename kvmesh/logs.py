"""Log lines of every process: text by default, or one JSON object a line (`--log-json`, or
KVMESH_LOG_JSON=1, which every process `kvmesh up` starts inherits) for a log pipeline to index.

A JSON line holds time (UTC, ISO 8601), level, logger, message and service, the trace and span
ids of the span current when it was logged (or the ones the call passed in `extra`, for a line
logged outside its request's context), any other `extra` fields, and the exception's traceback."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime

from opentelemetry import trace

LOG_JSON_ENV = "KVMESH_LOG_JSON"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has: anything else on a record came in a call's `extra`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def json_from_env() -> bool:
    return os.environ.get(LOG_JSON_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            line["trace_id"], line["span_id"] = trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)
        line.update((k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(level: str, service: str, json_lines: bool | None = None) -> None:
    """The root logger's one handler (stderr), as logging.basicConfig makes it; `json_lines`
    None: as KVMESH_LOG_JSON says."""
    json_lines = json_from_env() if json_lines is None else json_lines
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(service) if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])

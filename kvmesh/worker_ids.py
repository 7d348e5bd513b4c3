"""The one rule for a worker id. An id is part of Redis keys (`kvmesh:{registry}:worker:<id>`,
`kvi:{<root>}:w:<id>`) and of a purge's SCAN pattern: with braces, colons or glob characters in it,
one worker's id could name another's keys. So the registry refuses any other id, and the index
refuses to purge one."""

from __future__ import annotations

import re

RULE = "1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def valid(worker_id: str) -> bool:
    return _PATTERN.fullmatch(worker_id) is not None


def check(worker_id: str) -> str:
    """`worker_id`, or ValueError naming it and the rule."""
    if not valid(worker_id):
        raise ValueError(f"worker id {worker_id!r} refused: a worker id is {RULE}")
    return worker_id

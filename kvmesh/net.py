"""Small network helpers."""

from __future__ import annotations

import socket
from collections.abc import Collection
from contextlib import ExitStack


def free_ports(count: int, host: str = "127.0.0.1", avoid: Collection[int] = ()) -> list[int]:
    """`count` distinct free ports (all held open until all are chosen, so none repeats), none of
    them in `avoid`: ports another process was told to bind but may not have bound yet."""
    with ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            s = stack.enter_context(socket.socket())
            s.bind((host, 0))
            if (port := s.getsockname()[1]) not in avoid:
                ports.append(port)
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]

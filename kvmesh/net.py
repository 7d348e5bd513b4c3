"""Small network helpers."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection
from contextlib import ExitStack

import psutil


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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return False


def bracketed(host: str) -> str:
    """An IPv6 address in brackets, as URLs, gRPC and ZMQ want it; anything else as it is."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def hostport(host: str, port: int) -> str:
    return f"{bracketed(host)}:{port}"


def interface_of(address: str) -> str | None:
    """The name of this host's network interface that holds `address`, if one does."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addresses):
            return name
    return None

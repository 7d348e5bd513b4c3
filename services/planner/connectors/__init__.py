"""How the planner changes pool sizes. A connector reports each pool's workers (running or on
their way) and moves a pool to a size; `local` runs worker processes on this machine."""

from __future__ import annotations

from typing import Protocol


class Connector(Protocol):
    name: str

    def current(self) -> dict[str, int]:
        """Workers per pool ("prefill", "decode"), counting those started but not registered yet."""
        ...

    def scale(self, pool: str, replicas: int) -> str:
        """Moves the pool toward `replicas`; returns what it did, in words."""
        ...

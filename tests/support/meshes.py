"""Meshes for the integration tests: `kvmesh up` started and stopped as a user would, and the one
mesh of real engines that may run at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from kvmesh.cli.local_mesh import LocalMesh
from tests.support.crash import SHM_PREFIX

# For tests of the router service itself (its Explain predictions, its sessions, its failover): the
# gateway asks the router even when nothing else is in flight (docs/routing.md).
ROUTER_DECIDES = ("--route-in-process-below", "0")


@contextlib.contextmanager
def running(
    log_dir: Path, args: tuple[str, ...], workers: int, env: dict[str, str] | None = None
) -> Iterator[LocalMesh]:
    """`kvmesh up <args>` with `workers` registered; then Ctrl-C, which must end it cleanly and leave
    no Triton shared memory behind."""
    shm_before = set(Path("/dev/shm").glob(f"{SHM_PREFIX}*"))
    mesh = LocalMesh.start(log_dir, extra_args=args, env=env)
    try:
        mesh.wait_for_workers(workers)
        yield mesh
    finally:
        code = mesh.stop()
    assert code == 0, mesh.log("up")
    left = set(Path("/dev/shm").glob(f"{SHM_PREFIX}*")) - shm_before
    assert not left, f"Triton left shared memory behind: {left}"


class OneAtATime:
    """Hands out the running mesh of real engines of the kind asked for. Two such meshes would put
    four vLLM engines on this machine's two cores, so asking for another kind stops the running
    one first; the tests can then run in any order, and in file order none starts twice."""

    def __init__(self) -> None:
        self._kind: str | None = None
        self._mesh: LocalMesh | None = None
        self._running = contextlib.ExitStack()

    def get(self, kind: str, start: Callable[[], AbstractContextManager[LocalMesh]]) -> LocalMesh:
        if kind != self._kind or self._mesh is None:
            self.stop()
            self._mesh = self._running.enter_context(start())
            self._kind = kind
        return self._mesh

    def release(self, mesh: LocalMesh) -> None:
        """For a module that leaves its mesh unfit for others (a worker killed for good): stops it,
        if it still runs, and the next to ask gets a fresh one."""
        if mesh is self._mesh:
            self.stop()

    def stop(self) -> None:
        self._kind, self._mesh = None, None
        self._running.close()

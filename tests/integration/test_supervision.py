"""`kvmesh up` restarts a service that keeps dying, each time (after a backoff that grows), and says
so with the end of its log; the mesh never gives up (it used to stop after three restarts). A sim
mesh whose router is SIGKILLed five times."""

from __future__ import annotations

from functools import partial

import grpc
import pytest

from kvmesh import auth
from kvmesh.cli.local_mesh import LocalMesh
from kvmesh.v1 import router_pb2, router_pb2_grpc
from tests.support import meshes
from tests.support.waiting import wait_for

KILLS = 5


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with meshes.running(tmp_path_factory.mktemp("supervision-logs"), ("--engine", "sim"), workers=1) as mesh:
        yield mesh


def router_answers(mesh: LocalMesh) -> bool:
    with mesh.channel(mesh.router) as channel:
        try:
            router_pb2_grpc.RouterStub(channel).Workers(
                router_pb2.WorkersRequest(), timeout=2, metadata=auth.bearer(mesh.admin_key)
            )
        except grpc.RpcError:
            return False
    return True


def router_back(mesh: LocalMesh, killed_pid: int) -> bool:
    return any(p.pid != killed_pid for p in mesh.service_processes("router")) and router_answers(mesh)


def test_a_service_killed_again_and_again_comes_back_each_time(mesh):
    for kill in range(1, KILLS + 1):
        (router,) = mesh.service_processes("router")
        router.kill()
        router.wait(10)
        wait_for(partial(router_back, mesh, router.pid), timeout_s=60, what=f"the router back after kill {kill}")
        assert mesh.process.poll() is None, mesh.log("up")
    up = " ".join(mesh.log("up").split())  # rich wraps its lines
    assert up.count("router exited with code -9") == KILLS, up
    assert f"{KILLS} crashes in a row; restarting it in 8.0s" in up, up

"""A sample of bench/fuzz.py: generated REST and OpenAI requests, on a mesh of simulated workers
(real Triton, gateway, router, kvindex, Go REST front) with auth on, the admin key shown. No 5xx
for a client's request, every error in the front's error shape, no crash, and the mesh serves
afterwards."""

import pytest

from kvmesh.cli import rest_front
from kvmesh.cli.local_mesh import LocalMesh
from tests.support import fuzz


@pytest.fixture(scope="module")
def sim_mesh(tmp_path_factory):
    mesh = LocalMesh.start(tmp_path_factory.mktemp("fuzz-mesh-logs"), extra_args=fuzz.SIM_MESH_ARGS)
    yield mesh
    assert mesh.stop() == 0, mesh.log("up")


def _admin(mesh: LocalMesh) -> dict[str, str]:
    return fuzz.key_headers(mesh.admin_key)


def test_rest_front_answers_generated_requests(sim_mesh):
    tally = fuzz.fuzz_rest(sim_mesh.rest, rest_front.OPENAPI, examples_per_operation=25, headers=_admin(sim_mesh))
    assert tally.cases >= 14 * 10  # every operation, several cases each (constant ones repeat less)
    assert not tally.findings, "\n".join(tally.findings[:10])
    assert not fuzz.crashes(sim_mesh.log_dir)


def test_openai_endpoints_answer_generated_requests(sim_mesh):
    tally = fuzz.fuzz_openai(sim_mesh.http, sim_mesh.model, examples=150, headers=_admin(sim_mesh))
    assert {status for (_, status) in tally.statuses} >= {200, 400}  # both valid and bad bodies reached it
    assert not tally.findings, "\n".join(tally.findings[:10])
    assert not fuzz.crashes(sim_mesh.log_dir)
    assert fuzz.healthy(sim_mesh.http, sim_mesh.rest, sim_mesh.model, _admin(sim_mesh))

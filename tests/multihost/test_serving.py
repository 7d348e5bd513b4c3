"""Requests from the client host, served across hosts; KV events crossing from the workers' hosts to
kvindex's, so that a repeated prompt goes to the worker holding it and reuses its cache."""

import pytest

from kvmesh import hashing
from tests.support import prompts
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

BLOCK = 128  # the engines' KV block size (engines/vllm_engine.py)


def test_openai_and_grpc_requests_from_the_client_host_are_served(aggregated):
    mesh, client = aggregated.mesh, aggregated.client
    body = {"model": mesh.model, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4}
    chat = client.openai(url=f"{mesh.http}/v1/chat/completions", body=body)
    assert chat["choices"][0]["message"]["content"] and chat["usage"]["completion_tokens"] > 0
    answer = client.generate(address=mesh.grpc, model=mesh.model, ids=prompts.english("served", 40), max_tokens=4)
    assert len(answer["token_ids"]) == 4 and answer["worker_id"] in aggregated.worker_ids().values()


def test_workers_register_kv_event_endpoints_on_their_own_address(aggregated):
    records = {w["id"]: w for w in aggregated.client.workers(router=aggregated.mesh.router)}
    for name, worker_id in aggregated.worker_ids().items():
        address = aggregated.hosts[name].address
        assert records[worker_id]["kv_events"].startswith(f"tcp://{address}:"), records[worker_id]
        assert records[worker_id]["kv_replay"].startswith(f"tcp://{address}:"), records[worker_id]


def test_a_repeated_prompt_goes_to_the_worker_holding_it(aggregated):
    mesh, client = aggregated.mesh, aggregated.client
    ids = prompts.english("repeated", 3 * BLOCK + 20)
    first = client.generate(address=mesh.grpc, model=mesh.model, ids=ids, max_tokens=2)
    hashes = hashing.sequence_hashes(ids, BLOCK, mesh.model)

    def indexed() -> int:
        return client.match(kvindex=mesh.kvindex, model=mesh.model, hashes=hashes).get(first["worker_id"], 0)

    wait_for(lambda: indexed() == 3, timeout_s=10, what="the prompt's blocks in kvindex, from the worker's host")
    # Until the gateway releases the first request, its load can outweigh the overlap.
    wait_for(lambda: not any(w["in_flight"] for w in client.workers(router=mesh.router)), timeout_s=10, what="no load")
    second = client.generate(address=mesh.grpc, model=mesh.model, ids=ids, max_tokens=2)
    assert second["worker_id"] == first["worker_id"]
    assert second["cached_tokens"] >= 2 * BLOCK

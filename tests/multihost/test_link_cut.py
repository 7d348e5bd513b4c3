"""w1's link cut mid-stream (`ip link set eth0 down`, no process dies): w1 cannot renew its lease,
so it leaves the registry and kvindex drops its blocks; the gateway moves the stream to w2, which
finishes it with the greedy tokens of an uncut run. Link up: w1 registers again and kvindex takes
its blocks back from its replay. The mesh is left as it was found."""

import pytest

from kvmesh import hashing
from tests.multihost.conftest import LEASE_MS
from tests.support import prompts
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

BLOCK = 128
MAX_TOKENS = 64
# A lease runs out after LEASE_MS; the readers of the registry then need a moment to act on it.
GONE_S = LEASE_MS / 1000 + 10


def prompt_on_w1(aggregated) -> list[int]:
    """A prompt w1 has run, so that its repeats go there (the router breaks ties at random)."""
    mesh, client = aggregated.mesh, aggregated.client
    w1 = aggregated.worker_ids()["w1"]
    for attempt in range(16):
        ids = prompts.english(f"link-cut-{attempt}", 3 * BLOCK + 50)
        if client.generate(address=mesh.grpc, model=mesh.model, ids=ids, max_tokens=1)["worker_id"] == w1:
            return ids
    raise AssertionError("no prompt landed on w1")


def test_a_stream_on_a_cut_host_finishes_elsewhere_and_the_host_comes_back(aggregated):
    mesh, client, w1_host = aggregated.mesh, aggregated.client, aggregated.hosts["w1"]
    w1 = aggregated.worker_ids()["w1"]
    ids = prompt_on_w1(aggregated)
    hashes = hashing.sequence_hashes(ids, BLOCK, mesh.model)

    def w1_blocks() -> int:
        return client.match(kvindex=mesh.kvindex, model=mesh.model, hashes=hashes).get(w1, 0)

    def idle() -> bool:
        return not any(w["in_flight"] for w in client.workers(router=mesh.router))

    wait_for(lambda: w1_blocks() == 3, timeout_s=10, what="w1's blocks of the prompt in kvindex")
    wait_for(idle, timeout_s=10, what="no load")
    reference = client.generate(address=mesh.grpc, model=mesh.model, ids=ids, max_tokens=MAX_TOKENS)
    assert reference["worker_id"] == w1
    wait_for(idle, timeout_s=10, what="no load")
    first = client.stream_start(address=mesh.grpc, model=mesh.model, ids=ids, max_tokens=MAX_TOKENS)
    assert first["worker_id"] == w1, "the repeated prompt went to the worker holding it"
    w1_host.link(up=False)
    try:
        rest = client.stream_rest(timeout_s=120)
        assert rest["worker_id"] != w1 and rest["completion_tokens"] == MAX_TOKENS
        assert first["token_ids"] + rest["token_ids"] == reference["token_ids"]
        wait_for(lambda: w1 not in {w["id"] for w in client.workers(router=mesh.router)}, timeout_s=GONE_S,
                 what="w1 out of the registry")  # fmt: skip
        wait_for(lambda: w1 not in client.indexed_workers(kvindex=mesh.kvindex), timeout_s=GONE_S,
                 what="w1's blocks out of kvindex")  # fmt: skip
    finally:
        w1_host.link(up=True)
    wait_for(lambda: aggregated.worker_ids().get("w1") == w1, timeout_s=30, what="w1 registered again")
    wait_for(lambda: w1_blocks() == 3, timeout_s=30, what="w1's blocks back in kvindex")

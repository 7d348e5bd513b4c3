"""bench.chaos's short version (#29): a 4-worker, 2-router simulated mesh and a second gateway under
streaming load for two minutes while a worker is SIGKILLed, a router is SIGKILLed and a client stops
reading its stream: no request fails, every answer is the undisturbed mesh's token for token, and
each fault is noticed and the mesh whole again within the bench's bounds."""

from bench import chaos


def test_three_faults_under_load_lose_nothing(real_meshes, tmp_path):
    real_meshes.stop()  # a mesh of real engines beside this one would share the two cores
    result = chaos.main(
        ["--minutes", "2", "--faults", "worker-kill", "router-kill", "slow-client", "--concurrency", "16",
         "--log-dir", str(tmp_path)]
    )  # fmt: skip
    assert result["requests"] > 100
    assert result["failed"] == 0 and result["mismatched"] == 0, [f["report"] for f in result["faults"]]
    assert [f["name"] for f in result["faults"]] and len(result["faults"]) == 3
    for fault in result["faults"]:
        assert fault["detected"] is not None and fault["recovered"] is not None, fault

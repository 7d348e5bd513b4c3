import time

from kvmesh.routing.inflight import InFlight


def test_phases_move_load_and_release_frees_it():
    f = InFlight(lease_s=60)
    f.add("r1", "w", prefill_blocks=3, total_blocks=4)
    f.add("r2", "w", prefill_blocks=2, total_blocks=2)
    load = f.load("w")
    assert (load.in_flight, load.prefill_blocks, load.decode_blocks) == (2, 5, 0)
    assert f.mark_prefilled("r1")
    assert (f.load("w").prefill_blocks, f.load("w").decode_blocks) == (2, 4)
    assert f.release("r1") and f.release("r2")
    assert f.load("w").in_flight == 0
    assert not f.release("r1")  # twice is harmless


def test_retried_id_replaces_its_entry():
    f = InFlight(lease_s=60)
    f.add("r", "a", 1, 1)
    f.add("r", "b", 1, 1)
    assert f.load("a").in_flight == 0 and f.load("b").in_flight == 1


def test_expiry_by_lease_and_by_worker_leaving():
    f = InFlight(lease_s=0.01)
    f.add("old", "w", 1, 1)
    time.sleep(0.02)
    f.lease_s = 60
    f.add("gone", "dead", 1, 1)
    f.add("fresh", "w", 1, 1)
    assert f.expire(live_workers={"w"}) == 2
    assert f.load("w").in_flight == 1 and f.load("dead").in_flight == 0

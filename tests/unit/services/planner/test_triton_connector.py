"""The triton connector's choices: who moves, how pools are counted while workers move, and that
a pool always keeps one worker."""

from kvmesh.v1 import worker_pb2
from services.planner.connectors.triton import TritonConnector

P, D, A = worker_pb2.ROLE_PREFILL, worker_pb2.ROLE_DECODE, worker_pb2.ROLE_AGGREGATED


class Fleet:
    def __init__(self, **roles):
        self.records = {
            wid: worker_pb2.WorkerRecord(id=wid, role=role, started_unix_ms=i)
            for i, (wid, role) in enumerate(roles.items())
        }
        self.asked: list[tuple[str, str]] = []

    def connector(self, ttl_s: float = 900.0) -> TritonConnector:
        return TritonConnector(lambda: dict(self.records), lambda w, m: self.asked.append((w, m)), "sim", ttl_s)

    def changes(self, wid: str, role) -> None:
        self.records[wid] = worker_pb2.WorkerRecord(
            id=wid, role=role, started_unix_ms=self.records[wid].started_unix_ms
        )


def test_growing_a_pool_moves_the_newest_worker_of_the_other():
    fleet = Fleet(d1=D, d2=D, p1=P, d3=D)
    connector = fleet.connector()
    assert connector.current() == {"prefill": 1, "decode": 3}
    assert "d3" in connector.scale("prefill", 2)
    assert fleet.asked == [("d3", "sim_prefill")]
    assert connector.current() == {"prefill": 2, "decode": 2}  # counted where it goes, before it gets there
    assert connector.scale("decode", 2) == "nothing to move"


def test_shrinking_a_pool_moves_workers_to_the_other():
    fleet = Fleet(p1=P, p2=P, d1=D)
    connector = fleet.connector()
    connector.scale("prefill", 1)
    assert fleet.asked == [("p2", "sim_decode")]


def test_a_moving_worker_is_counted_once_it_arrives_and_not_asked_twice():
    fleet = Fleet(p1=P, d1=D, d2=D)
    connector = fleet.connector()
    connector.scale("prefill", 2)
    connector.scale("prefill", 2)
    assert fleet.asked == [("d2", "sim_prefill")]
    fleet.changes("d2", P)
    assert connector.current() == {"prefill": 2, "decode": 1}
    assert connector.moving == {}


def test_each_pool_keeps_one_settled_worker_and_aggregated_or_draining_workers_stay():
    fleet = Fleet(p1=P, d1=D, d2=D)
    fleet.records["d1"].draining = True
    connector = fleet.connector()
    done = connector.scale("prefill", 3)
    assert fleet.asked == [("d2", "sim_prefill")] and "1 short" in done  # d1 is busy changing already
    connector.scale("prefill", 0)
    assert fleet.asked == [("d2", "sim_prefill")]  # p1 is the one settled prefill worker

    fleet = Fleet(p1=P, a1=A)
    fleet.connector().scale("prefill", 2)
    assert fleet.asked == []  # an aggregated worker does not change role


def test_a_request_the_worker_never_took_up_lapses():
    fleet = Fleet(p1=P, d1=D, d2=D)
    connector = fleet.connector(ttl_s=0.0)
    connector.scale("prefill", 2)
    assert connector.current() == {"prefill": 1, "decode": 2}


def test_a_planning_step_moves_only_a_surplus_to_a_need():
    fleet = Fleet(p1=P, p2=P, d1=D)
    connector = fleet.connector()
    assert connector.resize({"prefill": 1, "decode": 1}, connector.current()) == {}  # a surplus alone stays
    assert fleet.asked == []
    done = connector.resize({"prefill": 1, "decode": 2}, connector.current())
    assert fleet.asked == [("p2", "sim_decode")] and "p2" in done["decode"]
    fleet.changes("p2", D)
    # The need falls back: the worker stays a decode worker instead of flapping back.
    assert connector.resize({"prefill": 1, "decode": 1}, connector.current()) == {}
    assert connector.current() == {"prefill": 1, "decode": 2}

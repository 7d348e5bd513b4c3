"""Planner RPCs: proto ↔ the Planner's decisions and targets."""

from __future__ import annotations

import asyncio

from kvmesh.errors import InvalidArgument
from kvmesh.v1 import planner_pb2, planner_pb2_grpc, worker_pb2
from services.planner.planner import Planner, ScalingDecision
from services.planner.replicas import Targets

POOL_ROLE = {"prefill": worker_pb2.ROLE_PREFILL, "decode": worker_pb2.ROLE_DECODE}


def targets_to_proto(t: Targets) -> planner_pb2.Targets:
    return planner_pb2.Targets(ttft_ms=t.ttft_ms, itl_ms=t.itl_ms, percentile=t.percentile, max_replicas=t.max_replicas)


def targets_from_proto(t: planner_pb2.Targets) -> Targets:
    for name, value in (("ttft_ms", t.ttft_ms), ("itl_ms", t.itl_ms)):
        if not value > 0:
            raise InvalidArgument(f"targets.{name}: must be > 0, got {value}", param=f"targets.{name}")
    if not 0 < t.percentile < 100:
        raise InvalidArgument(f"targets.percentile: in (0, 100), got {t.percentile}", param="targets.percentile")
    if t.max_replicas < 2:
        raise InvalidArgument("targets.max_replicas: at least 2 (prefill + decode)", param="targets.max_replicas")
    return Targets(t.ttft_ms, t.itl_ms, t.percentile, t.max_replicas)


def decisions_to_proto(d: ScalingDecision | None) -> list[planner_pb2.PoolDecision]:
    if d is None:
        return []
    return [
        planner_pb2.PoolDecision(
            role=POOL_ROLE[p.pool], current_replicas=p.current, desired_replicas=p.desired, reason=p.reason
        )  # fmt: skip
        for p in d.pools
    ]


class PlannerServicer(planner_pb2_grpc.PlannerServicer):
    def __init__(self, planner: Planner):
        self.planner = planner

    async def Status(self, request, context):
        last = self.planner.last
        return planner_pb2.StatusResponse(
            targets=targets_to_proto(self.planner.targets),
            last_decisions=decisions_to_proto(last),
            last_decision_unix_ms=last.at_unix_ms if last else 0,
            degraded=last.degraded if last else True,
            connector=self.planner.connector.name,
        )

    async def Plan(self, request, context):
        decision = await asyncio.to_thread(self.planner.plan)
        return planner_pb2.PlanResponse(decisions=decisions_to_proto(decision))

    async def SetTargets(self, request, context):
        if not request.HasField("targets"):
            raise InvalidArgument("targets: required", param="targets")
        targets = targets_from_proto(request.targets)
        self.planner.set_targets(targets)
        return planner_pb2.SetTargetsResponse(targets=targets_to_proto(targets))

"""A mesh's gateway, KV index and router as stubs, and what the fault tests ask about one prompt:
how deep it is in the index for a worker, and which worker the router would choose for it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import grpc

from kvmesh import hashing
from kvmesh.v1 import inference_pb2_grpc, kvindex_pb2, kvindex_pb2_grpc, router_pb2, router_pb2_grpc


@dataclass
class IndexProbe:
    inference: inference_pb2_grpc.InferenceStub
    index: kvindex_pb2_grpc.KvIndexStub
    router: router_pb2_grpc.RouterStub
    model: str
    block: int

    def depth(self, ids: list[int], worker_id: str) -> int:
        """The prompt's blocks the index holds for the worker; -1 while kvindex does not answer."""
        hashes = hashing.sequence_hashes(ids, self.block, self.model)
        try:
            reply = self.index.Match(kvindex_pb2.MatchRequest(model=self.model, block_hashes=hashes), timeout=2)
        except grpc.RpcError:
            return -1
        return {o.worker_id: o.blocks for o in reply.overlaps}.get(worker_id, 0)

    def chosen(self, ids: list[int]) -> str:
        hashes = hashing.sequence_hashes(ids, self.block, self.model)
        route = router_pb2.RouteRequest(
            model=self.model, num_tokens=len(ids), block_hashes=hashes, block_size=self.block
        )
        return self.router.Explain(router_pb2.ExplainRequest(request=route)).chosen_worker_id


@contextmanager
def index_probe(mesh, block: int) -> Iterator[IndexProbe]:
    with ExitStack() as stack:
        gateway, index, router = (
            stack.enter_context(grpc.insecure_channel(a)) for a in (mesh.grpc, mesh.kvindex, mesh.router)
        )
        yield IndexProbe(
            inference_pb2_grpc.InferenceStub(gateway),
            kvindex_pb2_grpc.KvIndexStub(index),
            router_pb2_grpc.RouterStub(router),
            mesh.model,
            block,
        )

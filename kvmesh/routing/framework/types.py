"""What plugins see: the request, the candidates with their load, and the plugin protocols."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kvmesh.v1 import worker_pb2


# Slots: a decision builds one WorkerLoad and one Candidate per live worker.
@dataclass(slots=True)
class WorkerLoad:
    in_flight: int = 0
    # KV blocks of requests still in prefill / already decoding on the worker.
    prefill_blocks: int = 0
    decode_blocks: int = 0


@dataclass(slots=True)
class Candidate:
    record: worker_pb2.WorkerRecord
    load: WorkerLoad = field(default_factory=WorkerLoad)
    # Prompt blocks the worker already holds (from the KV index).
    overlap_blocks: int = 0
    # The record's id, read once (protobuf builds a new string at each read): every filter, scorer
    # and picker asks for it. The router passes the one it keeps per worker.
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = self.record.id


@dataclass(frozen=True)
class Request:
    model: str
    request_id: str
    num_tokens: int
    block_hashes: tuple[int, ...] = ()
    # Tokens per block of `block_hashes` (0: none sent).
    block_size: int = 0
    # The roles that may run the phase being routed: the whole request runs on an aggregated
    # worker or a decode worker (which prefills locally unless a prefill worker is added).
    roles: tuple[int, ...] = (worker_pb2.ROLE_AGGREGATED, worker_pb2.ROLE_DECODE)
    # Workers the caller saw fail for this request.
    excluded: frozenset[str] = frozenset()

    def blocks_on(self, candidate: Candidate) -> int:
        """The prompt's size in the candidate's KV blocks (a partial last block counts)."""
        size = candidate.record.kv_block_size or self.block_size or 1
        return -(-self.num_tokens // size)


class Filter(Protocol):
    """Keeps candidates in one pass over them all (a call per candidate costs more than the test);
    returns `candidates` itself when it drops none."""

    name: str

    def keep(self, request: Request, candidates: list[Candidate]) -> list[Candidate]: ...


class Scorer(Protocol):
    """A value for every candidate, higher is better; the profile multiplies by the scorer's weight
    and sums. Load scorers return negative costs (in KV blocks) so that weighted sums are Dynamo's
    cost function."""

    name: str

    def score(self, request: Request, candidates: list[Candidate]) -> dict[str, float]: ...


class Picker(Protocol):
    name: str

    def pick(self, scored: list[tuple[Candidate, float]], dry_run: bool) -> Candidate: ...

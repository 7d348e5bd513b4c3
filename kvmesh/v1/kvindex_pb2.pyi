from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MatchRequest(_message.Message):
    __slots__ = ("model", "block_hashes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    model: str
    block_hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[str] = ..., block_hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class WorkerOverlap(_message.Message):
    __slots__ = ("worker_id", "blocks")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    blocks: int
    def __init__(self, worker_id: _Optional[str] = ..., blocks: _Optional[int] = ...) -> None: ...

class MatchResponse(_message.Message):
    __slots__ = ("overlaps",)
    OVERLAPS_FIELD_NUMBER: _ClassVar[int]
    overlaps: _containers.RepeatedCompositeFieldContainer[WorkerOverlap]
    def __init__(self, overlaps: _Optional[_Iterable[_Union[WorkerOverlap, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerIndexStats(_message.Message):
    __slots__ = ("worker_id", "blocks", "events", "last_seq", "resyncs")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    RESYNCS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    blocks: int
    events: int
    last_seq: int
    resyncs: int
    def __init__(self, worker_id: _Optional[str] = ..., blocks: _Optional[int] = ..., events: _Optional[int] = ..., last_seq: _Optional[int] = ..., resyncs: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("workers", "events_per_second", "lag_ms_p50", "lag_ms_p99")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    LAG_MS_P50_FIELD_NUMBER: _ClassVar[int]
    LAG_MS_P99_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerIndexStats]
    events_per_second: float
    lag_ms_p50: float
    lag_ms_p99: float
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerIndexStats, _Mapping]]] = ..., events_per_second: _Optional[float] = ..., lag_ms_p50: _Optional[float] = ..., lag_ms_p99: _Optional[float] = ...) -> None: ...

class PurgeRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class PurgeResponse(_message.Message):
    __slots__ = ("blocks_removed",)
    BLOCKS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    blocks_removed: int
    def __init__(self, blocks_removed: _Optional[int] = ...) -> None: ...

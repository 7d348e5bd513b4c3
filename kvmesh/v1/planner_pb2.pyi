from google.api import annotations_pb2 as _annotations_pb2
from kvmesh.v1 import worker_pb2 as _worker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Targets(_message.Message):
    __slots__ = ("ttft_ms", "itl_ms", "percentile", "max_replicas")
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    ITL_MS_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ttft_ms: float
    itl_ms: float
    percentile: float
    max_replicas: int
    def __init__(self, ttft_ms: _Optional[float] = ..., itl_ms: _Optional[float] = ..., percentile: _Optional[float] = ..., max_replicas: _Optional[int] = ...) -> None: ...

class PoolDecision(_message.Message):
    __slots__ = ("role", "current_replicas", "desired_replicas", "reason")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    role: _worker_pb2.Role
    current_replicas: int
    desired_replicas: int
    reason: str
    def __init__(self, role: _Optional[_Union[_worker_pb2.Role, str]] = ..., current_replicas: _Optional[int] = ..., desired_replicas: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("targets", "last_decisions", "last_decision_unix_ms", "degraded", "connector")
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    LAST_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_DECISION_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    targets: Targets
    last_decisions: _containers.RepeatedCompositeFieldContainer[PoolDecision]
    last_decision_unix_ms: int
    degraded: bool
    connector: str
    def __init__(self, targets: _Optional[_Union[Targets, _Mapping]] = ..., last_decisions: _Optional[_Iterable[_Union[PoolDecision, _Mapping]]] = ..., last_decision_unix_ms: _Optional[int] = ..., degraded: _Optional[bool] = ..., connector: _Optional[str] = ...) -> None: ...

class PlanRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PlanResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[PoolDecision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[PoolDecision, _Mapping]]] = ...) -> None: ...

class SetTargetsRequest(_message.Message):
    __slots__ = ("targets",)
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    targets: Targets
    def __init__(self, targets: _Optional[_Union[Targets, _Mapping]] = ...) -> None: ...

class SetTargetsResponse(_message.Message):
    __slots__ = ("targets",)
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    targets: Targets
    def __init__(self, targets: _Optional[_Union[Targets, _Mapping]] = ...) -> None: ...

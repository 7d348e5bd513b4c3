from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_AGGREGATED: _ClassVar[Role]
    ROLE_PREFILL: _ClassVar[Role]
    ROLE_DECODE: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
ROLE_AGGREGATED: Role
ROLE_PREFILL: Role
ROLE_DECODE: Role

class WorkerRecord(_message.Message):
    __slots__ = ("id", "model", "role", "triton_grpc_address", "triton_model", "kv_block_size", "capacity", "max_model_len", "kv_events_endpoint", "started_unix_ms", "labels", "kv_events_replay_endpoint", "draining", "unresponsive", "triton_metrics_address")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TRITON_GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TRITON_MODEL_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    KV_EVENTS_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    KV_EVENTS_REPLAY_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    UNRESPONSIVE_FIELD_NUMBER: _ClassVar[int]
    TRITON_METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    role: Role
    triton_grpc_address: str
    triton_model: str
    kv_block_size: int
    capacity: int
    max_model_len: int
    kv_events_endpoint: str
    started_unix_ms: int
    labels: _containers.ScalarMap[str, str]
    kv_events_replay_endpoint: str
    draining: bool
    unresponsive: bool
    triton_metrics_address: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., triton_grpc_address: _Optional[str] = ..., triton_model: _Optional[str] = ..., kv_block_size: _Optional[int] = ..., capacity: _Optional[int] = ..., max_model_len: _Optional[int] = ..., kv_events_endpoint: _Optional[str] = ..., started_unix_ms: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., kv_events_replay_endpoint: _Optional[str] = ..., draining: _Optional[bool] = ..., unresponsive: _Optional[bool] = ..., triton_metrics_address: _Optional[str] = ...) -> None: ...

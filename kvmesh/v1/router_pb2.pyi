from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import wrappers_pb2 as _wrappers_pb2
from kvmesh.v1 import worker_pb2 as _worker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouteRequest(_message.Message):
    __slots__ = ("model", "request_id", "num_tokens", "block_hashes", "policy", "block_size", "exclude_worker_ids", "aggregated_only", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATED_ONLY_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    model: str
    request_id: str
    num_tokens: int
    block_hashes: _containers.RepeatedScalarFieldContainer[int]
    policy: str
    block_size: int
    exclude_worker_ids: _containers.RepeatedScalarFieldContainer[str]
    aggregated_only: bool
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, model: _Optional[str] = ..., request_id: _Optional[str] = ..., num_tokens: _Optional[int] = ..., block_hashes: _Optional[_Iterable[int]] = ..., policy: _Optional[str] = ..., block_size: _Optional[int] = ..., exclude_worker_ids: _Optional[_Iterable[str]] = ..., aggregated_only: _Optional[bool] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("worker", "policy", "overlap_blocks", "prefill_worker", "prefill_overlap_blocks", "disaggregation_reason")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_WORKER_FIELD_NUMBER: _ClassVar[int]
    PREFILL_OVERLAP_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    DISAGGREGATION_REASON_FIELD_NUMBER: _ClassVar[int]
    worker: _worker_pb2.WorkerRecord
    policy: str
    overlap_blocks: int
    prefill_worker: _worker_pb2.WorkerRecord
    prefill_overlap_blocks: int
    disaggregation_reason: str
    def __init__(self, worker: _Optional[_Union[_worker_pb2.WorkerRecord, _Mapping]] = ..., policy: _Optional[str] = ..., overlap_blocks: _Optional[int] = ..., prefill_worker: _Optional[_Union[_worker_pb2.WorkerRecord, _Mapping]] = ..., prefill_overlap_blocks: _Optional[int] = ..., disaggregation_reason: _Optional[str] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: RouteRequest
    def __init__(self, request: _Optional[_Union[RouteRequest, _Mapping]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("worker_id", "filtered_by", "overlap_blocks", "prefill_blocks", "decode_blocks", "in_flight", "score", "scores")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    FILTERED_BY_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    DECODE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    filtered_by: str
    overlap_blocks: int
    prefill_blocks: int
    decode_blocks: int
    in_flight: int
    score: float
    scores: _containers.ScalarMap[str, float]
    def __init__(self, worker_id: _Optional[str] = ..., filtered_by: _Optional[str] = ..., overlap_blocks: _Optional[int] = ..., prefill_blocks: _Optional[int] = ..., decode_blocks: _Optional[int] = ..., in_flight: _Optional[int] = ..., score: _Optional[float] = ..., scores: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("policy", "chosen_worker_id", "candidates", "disaggregation", "recent_predictions")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    DISAGGREGATION_FIELD_NUMBER: _ClassVar[int]
    RECENT_PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    policy: str
    chosen_worker_id: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    disaggregation: Disaggregation
    recent_predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, policy: _Optional[str] = ..., chosen_worker_id: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., disaggregation: _Optional[_Union[Disaggregation, _Mapping]] = ..., recent_predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("request_id", "worker_id", "predicted_cached_tokens", "actual_cached_tokens", "misprediction", "age_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MISPREDICTION_FIELD_NUMBER: _ClassVar[int]
    AGE_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    worker_id: str
    predicted_cached_tokens: int
    actual_cached_tokens: int
    misprediction: str
    age_ms: int
    def __init__(self, request_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., predicted_cached_tokens: _Optional[int] = ..., actual_cached_tokens: _Optional[int] = ..., misprediction: _Optional[str] = ..., age_ms: _Optional[int] = ...) -> None: ...

class Disaggregation(_message.Message):
    __slots__ = ("disaggregated", "reason", "uncached_tokens", "threshold_tokens", "prefill_worker_id", "prefill_candidates")
    DISAGGREGATED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UNCACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PREFILL_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    disaggregated: bool
    reason: str
    uncached_tokens: int
    threshold_tokens: int
    prefill_worker_id: str
    prefill_candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, disaggregated: _Optional[bool] = ..., reason: _Optional[str] = ..., uncached_tokens: _Optional[int] = ..., threshold_tokens: _Optional[int] = ..., prefill_worker_id: _Optional[str] = ..., prefill_candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class WorkersRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("record", "in_flight", "prefill_blocks", "decode_blocks", "lease_remaining_ms")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    PREFILL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    DECODE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LEASE_REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    record: _worker_pb2.WorkerRecord
    in_flight: int
    prefill_blocks: int
    decode_blocks: int
    lease_remaining_ms: int
    def __init__(self, record: _Optional[_Union[_worker_pb2.WorkerRecord, _Mapping]] = ..., in_flight: _Optional[int] = ..., prefill_blocks: _Optional[int] = ..., decode_blocks: _Optional[int] = ..., lease_remaining_ms: _Optional[int] = ...) -> None: ...

class WorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ...) -> None: ...

class MarkPrefilledRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class MarkPrefilledResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("request_id", "cached_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    cached_tokens: _wrappers_pb2.UInt32Value
    def __init__(self, request_id: _Optional[str] = ..., cached_tokens: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("route", "prefilled", "released", "release", "settings", "more")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    PREFILLED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    route: RouteRequest
    prefilled: str
    released: str
    release: ReleaseRequest
    settings: bool
    more: _containers.RepeatedCompositeFieldContainer[SessionRequest]
    def __init__(self, route: _Optional[_Union[RouteRequest, _Mapping]] = ..., prefilled: _Optional[str] = ..., released: _Optional[str] = ..., release: _Optional[_Union[ReleaseRequest, _Mapping]] = ..., settings: _Optional[bool] = ..., more: _Optional[_Iterable[_Union[SessionRequest, _Mapping]]] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("request_id", "route", "error", "summary", "settings", "more")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    route: RouteResponse
    error: RouteError
    summary: SessionSummary
    settings: RoutingSettings
    more: _containers.RepeatedCompositeFieldContainer[SessionResponse]
    def __init__(self, request_id: _Optional[str] = ..., route: _Optional[_Union[RouteResponse, _Mapping]] = ..., error: _Optional[_Union[RouteError, _Mapping]] = ..., summary: _Optional[_Union[SessionSummary, _Mapping]] = ..., settings: _Optional[_Union[RoutingSettings, _Mapping]] = ..., more: _Optional[_Iterable[_Union[SessionResponse, _Mapping]]] = ...) -> None: ...

class RoutingSettings(_message.Message):
    __slots__ = ("policy", "policies_json", "disagg_threshold_tokens", "request_lease_s")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICIES_JSON_FIELD_NUMBER: _ClassVar[int]
    DISAGG_THRESHOLD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_LEASE_S_FIELD_NUMBER: _ClassVar[int]
    policy: str
    policies_json: str
    disagg_threshold_tokens: int
    request_lease_s: float
    def __init__(self, policy: _Optional[str] = ..., policies_json: _Optional[str] = ..., disagg_threshold_tokens: _Optional[int] = ..., request_lease_s: _Optional[float] = ...) -> None: ...

class SessionSummary(_message.Message):
    __slots__ = ("routed", "prefilled", "released")
    ROUTED_FIELD_NUMBER: _ClassVar[int]
    PREFILLED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    routed: int
    prefilled: int
    released: int
    def __init__(self, routed: _Optional[int] = ..., prefilled: _Optional[int] = ..., released: _Optional[int] = ...) -> None: ...

class RouteError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ("counts_digest",)
    COUNTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    counts_digest: bool
    def __init__(self, counts_digest: _Optional[bool] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("model_version", "items", "links", "events", "uptime_seconds", "freshness_seconds", "config", "users", "catalog_items", "pinned_version", "learning", "events_pending", "log_events", "alerts", "ab_test", "shadow", "feedback", "counts_digest", "slos", "replica", "leader", "model_line")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PINNED_VERSION_FIELD_NUMBER: _ClassVar[int]
    LEARNING_FIELD_NUMBER: _ClassVar[int]
    EVENTS_PENDING_FIELD_NUMBER: _ClassVar[int]
    LOG_EVENTS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    AB_TEST_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    COUNTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SLOS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    MODEL_LINE_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    items: int
    links: int
    events: int
    uptime_seconds: float
    freshness_seconds: float
    config: _containers.ScalarMap[str, str]
    users: int
    catalog_items: int
    pinned_version: str
    learning: str
    events_pending: int
    log_events: int
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    ab_test: Experiment
    shadow: Experiment
    feedback: _containers.RepeatedCompositeFieldContainer[VersionFeedback]
    counts_digest: str
    slos: _containers.RepeatedCompositeFieldContainer[SloCheck]
    replica: str
    leader: str
    model_line: str
    def __init__(self, model_version: _Optional[str] = ..., items: _Optional[int] = ..., links: _Optional[int] = ..., events: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., freshness_seconds: _Optional[float] = ..., config: _Optional[_Mapping[str, str]] = ..., users: _Optional[int] = ..., catalog_items: _Optional[int] = ..., pinned_version: _Optional[str] = ..., learning: _Optional[str] = ..., events_pending: _Optional[int] = ..., log_events: _Optional[int] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., ab_test: _Optional[_Union[Experiment, _Mapping]] = ..., shadow: _Optional[_Union[Experiment, _Mapping]] = ..., feedback: _Optional[_Iterable[_Union[VersionFeedback, _Mapping]]] = ..., counts_digest: _Optional[str] = ..., slos: _Optional[_Iterable[_Union[SloCheck, _Mapping]]] = ..., replica: _Optional[str] = ..., leader: _Optional[str] = ..., model_line: _Optional[str] = ...) -> None: ...

class SloCheck(_message.Message):
    __slots__ = ("name", "value", "target", "ok", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    target: float
    ok: bool
    description: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., target: _Optional[float] = ..., ok: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("kind", "reason", "raised_at")
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RAISED_AT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    reason: str
    raised_at: float
    def __init__(self, kind: _Optional[str] = ..., reason: _Optional[str] = ..., raised_at: _Optional[float] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("version", "fraction", "started_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    version: str
    fraction: float
    started_at: float
    def __init__(self, version: _Optional[str] = ..., fraction: _Optional[float] = ..., started_at: _Optional[float] = ...) -> None: ...

class VersionFeedback(_message.Message):
    __slots__ = ("version", "impressions", "clicks", "ctr", "window_impressions", "window_clicks", "window_ctr")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    CLICKS_FIELD_NUMBER: _ClassVar[int]
    CTR_FIELD_NUMBER: _ClassVar[int]
    WINDOW_IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_CLICKS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_CTR_FIELD_NUMBER: _ClassVar[int]
    version: str
    impressions: int
    clicks: int
    ctr: float
    window_impressions: int
    window_clicks: int
    window_ctr: float
    def __init__(self, version: _Optional[str] = ..., impressions: _Optional[int] = ..., clicks: _Optional[int] = ..., ctr: _Optional[float] = ..., window_impressions: _Optional[int] = ..., window_clicks: _Optional[int] = ..., window_ctr: _Optional[float] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "parent_version", "state", "reason", "created_at", "event_watermark", "items", "links", "metrics")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[ModelVersion.State]
        BUILDING: _ClassVar[ModelVersion.State]
        AVAILABLE: _ClassVar[ModelVersion.State]
        SERVING: _ClassVar[ModelVersion.State]
        SHADOW: _ClassVar[ModelVersion.State]
        CANDIDATE: _ClassVar[ModelVersion.State]
        REJECTED: _ClassVar[ModelVersion.State]
        RETIRED: _ClassVar[ModelVersion.State]
    STATE_UNSPECIFIED: ModelVersion.State
    BUILDING: ModelVersion.State
    AVAILABLE: ModelVersion.State
    SERVING: ModelVersion.State
    SHADOW: ModelVersion.State
    CANDIDATE: ModelVersion.State
    REJECTED: ModelVersion.State
    RETIRED: ModelVersion.State
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EVENT_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    version: str
    parent_version: str
    state: ModelVersion.State
    reason: str
    created_at: float
    event_watermark: int
    items: int
    links: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, version: _Optional[str] = ..., parent_version: _Optional[str] = ..., state: _Optional[_Union[ModelVersion.State, str]] = ..., reason: _Optional[str] = ..., created_at: _Optional[float] = ..., event_watermark: _Optional[int] = ..., items: _Optional[int] = ..., links: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ListModelVersionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class GetModelVersionRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class GetModelVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class RollbackModelRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class RollbackModelResponse(_message.Message):
    __slots__ = ("serving_version", "previous_version")
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    serving_version: str
    previous_version: str
    def __init__(self, serving_version: _Optional[str] = ..., previous_version: _Optional[str] = ...) -> None: ...

class ResumeLearningRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeLearningResponse(_message.Message):
    __slots__ = ("serving_version", "events_applied")
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    serving_version: str
    events_applied: int
    def __init__(self, serving_version: _Optional[str] = ..., events_applied: _Optional[int] = ...) -> None: ...

class RebuildModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RebuildModelResponse(_message.Message):
    __slots__ = ("model_version", "build_seconds", "state")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUILD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    build_seconds: float
    state: ModelVersion.State
    def __init__(self, model_version: _Optional[str] = ..., build_seconds: _Optional[float] = ..., state: _Optional[_Union[ModelVersion.State, str]] = ...) -> None: ...

class PromoteModelRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class PromoteModelResponse(_message.Message):
    __slots__ = ("serving_version", "previous_version")
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    serving_version: str
    previous_version: str
    def __init__(self, serving_version: _Optional[str] = ..., previous_version: _Optional[str] = ...) -> None: ...

class StartShadowRequest(_message.Message):
    __slots__ = ("version", "sample_rate")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    version: str
    sample_rate: float
    def __init__(self, version: _Optional[str] = ..., sample_rate: _Optional[float] = ...) -> None: ...

class StartShadowResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopShadowRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopShadowResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartABTestRequest(_message.Message):
    __slots__ = ("version", "fraction")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    version: str
    fraction: float
    def __init__(self, version: _Optional[str] = ..., fraction: _Optional[float] = ...) -> None: ...

class StartABTestResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopABTestRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopABTestResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMetricsResponse(_message.Message):
    __slots__ = ("recommend_requests", "cache_hits", "events_accepted", "events_rejected", "impressions", "clicks", "ctr", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "feedback", "publishes", "auto_rollbacks", "shadow", "freshness_lag_seconds", "hit_rate", "exposure", "arms", "drift", "events_rejected_by", "predictions_logged", "predictions_dropped", "waiting_seconds")
    class EventsRejectedByEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RECOMMEND_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    CLICKS_FIELD_NUMBER: _ClassVar[int]
    CTR_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    PUBLISHES_FIELD_NUMBER: _ClassVar[int]
    AUTO_ROLLBACKS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    EXPOSURE_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_REJECTED_BY_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_LOGGED_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    WAITING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    recommend_requests: int
    cache_hits: int
    events_accepted: int
    events_rejected: int
    impressions: int
    clicks: int
    ctr: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    feedback: _containers.RepeatedCompositeFieldContainer[VersionFeedback]
    publishes: int
    auto_rollbacks: int
    shadow: ShadowStats
    freshness_lag_seconds: float
    hit_rate: float
    exposure: ExposureStats
    arms: _containers.RepeatedCompositeFieldContainer[ArmFeedback]
    drift: DriftStats
    events_rejected_by: _containers.ScalarMap[str, int]
    predictions_logged: int
    predictions_dropped: int
    waiting_seconds: float
    def __init__(self, recommend_requests: _Optional[int] = ..., cache_hits: _Optional[int] = ..., events_accepted: _Optional[int] = ..., events_rejected: _Optional[int] = ..., impressions: _Optional[int] = ..., clicks: _Optional[int] = ..., ctr: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., feedback: _Optional[_Iterable[_Union[VersionFeedback, _Mapping]]] = ..., publishes: _Optional[int] = ..., auto_rollbacks: _Optional[int] = ..., shadow: _Optional[_Union[ShadowStats, _Mapping]] = ..., freshness_lag_seconds: _Optional[float] = ..., hit_rate: _Optional[float] = ..., exposure: _Optional[_Union[ExposureStats, _Mapping]] = ..., arms: _Optional[_Iterable[_Union[ArmFeedback, _Mapping]]] = ..., drift: _Optional[_Union[DriftStats, _Mapping]] = ..., events_rejected_by: _Optional[_Mapping[str, int]] = ..., predictions_logged: _Optional[int] = ..., predictions_dropped: _Optional[int] = ..., waiting_seconds: _Optional[float] = ...) -> None: ...

class ExposureStats(_message.Message):
    __slots__ = ("responses", "slots", "distinct_items", "coverage", "gini", "entropy_bits", "source_shares")
    class SourceSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    GINI_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_BITS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHARES_FIELD_NUMBER: _ClassVar[int]
    responses: int
    slots: int
    distinct_items: int
    coverage: float
    gini: float
    entropy_bits: float
    source_shares: _containers.ScalarMap[str, float]
    def __init__(self, responses: _Optional[int] = ..., slots: _Optional[int] = ..., distinct_items: _Optional[int] = ..., coverage: _Optional[float] = ..., gini: _Optional[float] = ..., entropy_bits: _Optional[float] = ..., source_shares: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ArmFeedback(_message.Message):
    __slots__ = ("version", "arm", "impressions", "clicks", "ctr")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    CLICKS_FIELD_NUMBER: _ClassVar[int]
    CTR_FIELD_NUMBER: _ClassVar[int]
    version: str
    arm: str
    impressions: int
    clicks: int
    ctr: float
    def __init__(self, version: _Optional[str] = ..., arm: _Optional[str] = ..., impressions: _Optional[int] = ..., clicks: _Optional[int] = ..., ctr: _Optional[float] = ...) -> None: ...

class DriftStats(_message.Message):
    __slots__ = ("ctr_recent", "ctr_baseline", "recent_impressions", "baseline_impressions", "item_divergence")
    CTR_RECENT_FIELD_NUMBER: _ClassVar[int]
    CTR_BASELINE_FIELD_NUMBER: _ClassVar[int]
    RECENT_IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    ITEM_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    ctr_recent: float
    ctr_baseline: float
    recent_impressions: int
    baseline_impressions: int
    item_divergence: float
    def __init__(self, ctr_recent: _Optional[float] = ..., ctr_baseline: _Optional[float] = ..., recent_impressions: _Optional[int] = ..., baseline_impressions: _Optional[int] = ..., item_divergence: _Optional[float] = ...) -> None: ...

class ShadowStats(_message.Message):
    __slots__ = ("version", "requests", "dropped", "mean_overlap", "latency_p50_ms", "latency_p99_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    MEAN_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    version: str
    requests: int
    dropped: int
    mean_overlap: float
    latency_p50_ms: float
    latency_p99_ms: float
    def __init__(self, version: _Optional[str] = ..., requests: _Optional[int] = ..., dropped: _Optional[int] = ..., mean_overlap: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "categories", "available", "tags")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    available: bool
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_id: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., available: _Optional[bool] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteItemsResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

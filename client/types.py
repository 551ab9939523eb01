"""Plain, frozen values the client returns and accepts, and their one conversion to/from protobuf.

Each type converts itself: ``from_proto`` for what the server sends, ``to_proto`` for what the
client sends (``Event``, ``Item``). Enums become their names ("COOCCURRENCE", "SERVING"); a
number this client does not know (a newer server) becomes its decimal text rather than an error.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from covisit.v1 import admin_pb2, feedback_pb2, recommend_pb2


def _from_fields(cls, msg, **converted):
    """``cls`` built from the same-named fields of ``msg``, with ``converted`` replacing some."""
    return cls(**{f.name: getattr(msg, f.name) for f in fields(cls) if f.name not in converted}, **converted)


def _enum_name(enum, number: int) -> str:
    """The enum value's name, or its number as text if this client's stubs do not know it."""
    try:
        return enum.Name(number)
    except ValueError:
        return str(number)


@dataclass(frozen=True)
class RecommendedItem:
    """One recommended item; ``source`` is a ``RecommendedItem.Source`` name, e.g. "POPULARITY"."""

    item_id: str
    score: float
    source: str

    @classmethod
    def from_proto(cls, msg: recommend_pb2.RecommendedItem) -> RecommendedItem:
        return _from_fields(cls, msg, source=_enum_name(recommend_pb2.RecommendedItem.Source, msg.source))


def _items(msgs) -> tuple[RecommendedItem, ...]:
    return tuple(RecommendedItem.from_proto(m) for m in msgs)


@dataclass(frozen=True)
class Recommendations:
    """A RecommendItems answer, best first; pass ``request_id`` to impressions and clicks."""

    items: tuple[RecommendedItem, ...]
    model_version: str
    request_id: str
    from_cache: bool

    @classmethod
    def from_proto(cls, msg: recommend_pb2.RecommendItemsResponse) -> Recommendations:
        return _from_fields(cls, msg, items=_items(msg.items))


@dataclass(frozen=True)
class SimilarItems:
    """A GetSimilarItems answer, best first."""

    items: tuple[RecommendedItem, ...]
    model_version: str

    @classmethod
    def from_proto(cls, msg: recommend_pb2.GetSimilarItemsResponse) -> SimilarItems:
        return _from_fields(cls, msg, items=_items(msg.items))


@dataclass(frozen=True)
class Event:
    """A user event. ``session_id=None`` leaves the field unset (the server splits sessions at
    inactivity gaps); any string, even "", is sent as set."""

    user_id: str
    item_id: str
    event_type: str
    timestamp: float
    session_id: str | None = None

    def to_proto(self) -> feedback_pb2.Event:
        return feedback_pb2.Event(user_id=self.user_id, item_id=self.item_id, event_type=self.event_type,
                                  timestamp=self.timestamp, session_id=self.session_id)

    @classmethod
    def from_proto(cls, msg: feedback_pb2.Event) -> Event:
        return _from_fields(cls, msg, session_id=msg.session_id if msg.HasField("session_id") else None)


@dataclass(frozen=True)
class Item:
    """A catalog item; ``available=False`` hides it from every response."""

    item_id: str
    categories: tuple[str, ...] = ()
    available: bool = True
    tags: tuple[str, ...] = ()

    def to_proto(self) -> admin_pb2.Item:
        return admin_pb2.Item(item_id=self.item_id, categories=self.categories, available=self.available,
                              tags=self.tags)

    @classmethod
    def from_proto(cls, msg: admin_pb2.Item) -> Item:
        return _from_fields(cls, msg, categories=tuple(msg.categories), tags=tuple(msg.tags))


@dataclass(frozen=True)
class Alert:
    """An alert the server raised and has not cleared, e.g. kind "auto_rollback"."""

    kind: str
    reason: str
    raised_at: float

    @classmethod
    def from_proto(cls, msg: admin_pb2.Alert) -> Alert:
        return _from_fields(cls, msg)


@dataclass(frozen=True)
class Experiment:
    """A running A/B test or shadow: the version under test and its share of users (A/B) or of
    requests (shadow)."""

    version: str
    fraction: float
    started_at: float

    @classmethod
    def from_proto(cls, msg: admin_pb2.Experiment) -> Experiment:
        return _from_fields(cls, msg)


def _experiment(msg, name: str) -> Experiment | None:
    """The Experiment in field ``name`` of ``msg``, or None when none runs (unset or no version)."""
    running = getattr(msg, name)
    return Experiment.from_proto(running) if msg.HasField(name) and running.version else None


@dataclass(frozen=True)
class VersionFeedback:
    """Impressions, clicks and CTR of one model line (a full build and the incremental versions
    published on top of it, named by the full build's version); ``window_*`` cover the most recent
    impressions only."""

    version: str
    impressions: int
    clicks: int
    ctr: float
    window_impressions: int
    window_clicks: int
    window_ctr: float

    @classmethod
    def from_proto(cls, msg: admin_pb2.VersionFeedback) -> VersionFeedback:
        return _from_fields(cls, msg)


def _feedback(msgs) -> tuple[VersionFeedback, ...]:
    return tuple(VersionFeedback.from_proto(m) for m in msgs)


@dataclass(frozen=True)
class ShadowStats:
    """How the shadow version compares with the serving one; latencies in milliseconds."""

    version: str
    requests: int
    dropped: int
    mean_overlap: float
    latency_p50_ms: float
    latency_p99_ms: float

    @classmethod
    def from_proto(cls, msg: admin_pb2.ShadowStats) -> ShadowStats:
        return _from_fields(cls, msg)


@dataclass(frozen=True)
class SloCheck:
    """One service level measured now: ``ok`` when ``value`` meets ``target`` (latency and
    freshness below it, the cache hit rate above)."""

    name: str
    value: float
    target: float
    ok: bool
    description: str

    @classmethod
    def from_proto(cls, msg: admin_pb2.SloCheck) -> SloCheck:
        return _from_fields(cls, msg)


@dataclass(frozen=True)
class ExposureStats:
    """Exposure of the server's newest responses: coverage of the known items, the Gini
    coefficient and entropy (bits) of exposure, and the share of slots by source."""

    responses: int
    slots: int
    distinct_items: int
    coverage: float
    gini: float
    entropy_bits: float
    source_shares: dict[str, float]

    @classmethod
    def from_proto(cls, msg: admin_pb2.ExposureStats) -> ExposureStats:
        return _from_fields(cls, msg, source_shares=dict(msg.source_shares))


@dataclass(frozen=True)
class ArmFeedback:
    """Impressions, clicks and CTR of one model line in one arm ("serving" or "ab")."""

    version: str
    arm: str
    impressions: int
    clicks: int
    ctr: float

    @classmethod
    def from_proto(cls, msg: admin_pb2.ArmFeedback) -> ArmFeedback:
        return _from_fields(cls, msg)


@dataclass(frozen=True)
class DriftStats:
    """CTR over the recent window and its trailing baseline; the Jensen-Shannon divergence of
    recent vs trailing event items (None until both windows are full)."""

    ctr_recent: float
    ctr_baseline: float
    recent_impressions: int
    baseline_impressions: int
    item_divergence: float | None

    @classmethod
    def from_proto(cls, msg: admin_pb2.DriftStats) -> DriftStats:
        return _from_fields(cls, msg, item_divergence=msg.item_divergence if msg.HasField("item_divergence") else None)


@dataclass(frozen=True)
class Status:
    """The serving model and the server's state (GetStatus). ``pinned_version`` is "" unless a
    rollback pinned one; ``learning`` is "learning", "pinned" or "replaying"; ``ab_test`` and
    ``shadow`` are None when none runs."""

    model_version: str
    items: int
    links: int
    events: int
    uptime_seconds: float
    freshness_seconds: float
    config: dict[str, str]
    users: int
    catalog_items: int
    pinned_version: str
    learning: str
    events_pending: int
    log_events: int
    alerts: tuple[Alert, ...]
    ab_test: Experiment | None
    shadow: Experiment | None
    feedback: tuple[VersionFeedback, ...]
    counts_digest: str  # "" unless asked for
    slos: tuple[SloCheck, ...]
    replica: str  # this replica's name in a fleet sharing a JetStream log ("" alone)
    leader: str  # the fleet's leader ("" alone or during an election)
    model_line: str  # the full build model_version grew from (the same on every replica of a fleet)

    @classmethod
    def from_proto(cls, msg: admin_pb2.GetStatusResponse) -> Status:
        return _from_fields(cls, msg, config=dict(msg.config),
                            alerts=tuple(Alert.from_proto(a) for a in msg.alerts),
                            ab_test=_experiment(msg, "ab_test"), shadow=_experiment(msg, "shadow"),
                            feedback=_feedback(msg.feedback), slos=tuple(SloCheck.from_proto(c) for c in msg.slos))


@dataclass(frozen=True)
class ModelVersion:
    """One model version; ``state`` is a ``ModelVersion.State`` name, e.g. "SERVING"."""

    version: str
    parent_version: str
    state: str
    reason: str
    created_at: float
    event_watermark: int
    items: int
    links: int
    metrics: dict[str, float]

    @classmethod
    def from_proto(cls, msg: admin_pb2.ModelVersion) -> ModelVersion:
        return _from_fields(cls, msg, state=_enum_name(admin_pb2.ModelVersion.State, msg.state),
                            metrics=dict(msg.metrics))


@dataclass(frozen=True)
class Metrics:
    """The numbers the server's monitor keeps (GetMetrics); latencies in milliseconds; ``shadow``
    is None when no shadow runs."""

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
    feedback: tuple[VersionFeedback, ...]
    publishes: int
    auto_rollbacks: int
    shadow: ShadowStats | None
    freshness_lag_seconds: float
    hit_rate: float
    exposure: ExposureStats
    arms: tuple[ArmFeedback, ...]
    drift: DriftStats
    events_rejected_by: dict[str, int]
    predictions_logged: int
    predictions_dropped: int
    waiting_seconds: float

    @classmethod
    def from_proto(cls, msg: admin_pb2.GetMetricsResponse) -> Metrics:
        shadow = ShadowStats.from_proto(msg.shadow) if msg.HasField("shadow") else None
        return _from_fields(cls, msg, feedback=_feedback(msg.feedback), shadow=shadow,
                            exposure=ExposureStats.from_proto(msg.exposure),
                            arms=tuple(ArmFeedback.from_proto(a) for a in msg.arms),
                            drift=DriftStats.from_proto(msg.drift), events_rejected_by=dict(msg.events_rejected_by))


@dataclass(frozen=True)
class Rollback:
    """The outcome of RollbackModel: ``serving_version`` now serves, pinned."""

    serving_version: str
    previous_version: str

    @classmethod
    def from_proto(cls, msg: admin_pb2.RollbackModelResponse) -> Rollback:
        return _from_fields(cls, msg)


@dataclass(frozen=True)
class Resume:
    """The outcome of ResumeLearning: the version serving once the events logged during the pin
    were learned, and how many there were."""

    serving_version: str
    events_applied: int

    @classmethod
    def from_proto(cls, msg: admin_pb2.ResumeLearningResponse) -> Resume:
        return _from_fields(cls, msg)


@dataclass(frozen=True)
class Rebuild:
    """The outcome of RebuildModel: the new version, how long its build took, and its ``state``
    (a ``ModelVersion.State`` name) when the call returned: "CANDIDATE" until the quality gate
    has scored it, "SERVING" if nothing served before."""

    model_version: str
    build_seconds: float
    state: str

    @classmethod
    def from_proto(cls, msg: admin_pb2.RebuildModelResponse) -> Rebuild:
        return _from_fields(cls, msg, state=_enum_name(admin_pb2.ModelVersion.State, msg.state))


@dataclass(frozen=True)
class Promotion:
    """The outcome of PromoteModel."""

    serving_version: str
    previous_version: str

    @classmethod
    def from_proto(cls, msg: admin_pb2.PromoteModelResponse) -> Promotion:
        return _from_fields(cls, msg)

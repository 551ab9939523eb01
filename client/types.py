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
class Status:
    """The serving model and the server's state (GetStatus)."""

    model_version: str
    items: int
    links: int
    events: int
    uptime_seconds: float
    freshness_seconds: float
    config: dict[str, str]
    users: int
    catalog_items: int

    @classmethod
    def from_proto(cls, msg: admin_pb2.GetStatusResponse) -> Status:
        return _from_fields(cls, msg, config=dict(msg.config))


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
    """The numbers the server's monitor keeps (GetMetrics); latencies in milliseconds."""

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

    @classmethod
    def from_proto(cls, msg: admin_pb2.GetMetricsResponse) -> Metrics:
        return _from_fields(cls, msg)


@dataclass(frozen=True)
class Rollback:
    """The outcome of RollbackModel."""

    serving_version: str
    previous_version: str

    @classmethod
    def from_proto(cls, msg: admin_pb2.RollbackModelResponse) -> Rollback:
        return _from_fields(cls, msg)


@dataclass(frozen=True)
class Rebuild:
    """The outcome of RebuildModel: the new serving version and how long its build took."""

    model_version: str
    build_seconds: float

    @classmethod
    def from_proto(cls, msg: admin_pb2.RebuildModelResponse) -> Rebuild:
        return _from_fields(cls, msg)

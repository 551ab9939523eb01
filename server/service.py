"""The three gRPC servicers: each method turns a request into one engine call and back.

Errors are raised as core exceptions; the interceptor maps them to status codes.
"""

from __future__ import annotations

from covisit.core import kernels_topk as kt
from covisit.core.engine import Engine, Recommendation, VersionInfo
from covisit.core.errors import InvalidArgument
from covisit.core.events import Event
from covisit.core.scoring import Scored
from covisit.server.metrics import RECOMMEND_METHOD, slo_checks
from covisit.v1 import admin_pb2, admin_pb2_grpc, feedback_pb2, feedback_pb2_grpc
from covisit.v1 import recommend_pb2, recommend_pb2_grpc

DEFAULT_K = 10  # k = 0 (unset) means this
DEFAULT_SAMPLE_RATE = 0.1  # StartShadow sample_rate = 0 (unset) means this
DEFAULT_FRACTION = 0.1  # StartABTest fraction = 0 (unset) means this
SOURCES = {
    kt.SOURCE_COOCCURRENCE: recommend_pb2.RecommendedItem.COOCCURRENCE,
    kt.SOURCE_CONTENT: recommend_pb2.RecommendedItem.CONTENT,
    kt.SOURCE_POPULARITY: recommend_pb2.RecommendedItem.POPULARITY,
    kt.SOURCE_EXPLORATION: recommend_pb2.RecommendedItem.EXPLORATION,
}


def _items(scored: list[Scored]) -> list[recommend_pb2.RecommendedItem]:
    return [recommend_pb2.RecommendedItem(item_id=s.item_id, score=s.score, source=SOURCES[s.source])
            for s in scored]


def _recommend(engine: Engine, request: recommend_pb2.RecommendItemsRequest) -> Recommendation:
    return engine.recommend(
        user_id=request.user_id, context_items=list(request.context_items), k=request.k or DEFAULT_K,
        exclude_items=list(request.exclude_items), exclude_seen=request.exclude_seen,
        allowed_items=list(request.allowed_items) or None, categories=list(request.categories))


def _response(rec: Recommendation) -> recommend_pb2.RecommendItemsResponse:
    return recommend_pb2.RecommendItemsResponse(items=_items(rec.items), model_version=str(rec.model_version),
                                                request_id=rec.request_id, from_cache=rec.from_cache)


def _version_number(text: str, field: str = "version") -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(field, f"not a model version: {text!r}") from None


class RecommendServicer(recommend_pb2_grpc.RecommendServiceServicer):
    def __init__(self, engine: Engine):
        self.engine = engine

    def RecommendItems(self, request, context):
        return _response(_recommend(self.engine, request))

    def GetSimilarItems(self, request, context):
        items, version = self.engine.similar(request.item_id, request.k or DEFAULT_K)
        return recommend_pb2.GetSimilarItemsResponse(items=_items(items), model_version=str(version))

    def BatchRecommendItems(self, request, context):
        limit = self.engine.limits.max_batch_requests
        if len(request.requests) > limit:
            raise InvalidArgument("requests", f"at most {limit} per call, got {len(request.requests)}")
        responses = []
        for i, one in enumerate(request.requests):
            try:
                responses.append(_response(_recommend(self.engine, one)))
            except InvalidArgument as exc:
                raise exc.within(f"requests[{i}].") from None
        return recommend_pb2.BatchRecommendItemsResponse(responses=responses)


def _event(message: feedback_pb2.Event) -> Event:
    session = message.session_id if message.HasField("session_id") and message.session_id else None
    return Event(message.user_id, message.item_id, message.event_type, message.timestamp, session)


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, engine: Engine):
        self.engine = engine

    def RecordEvents(self, request, context):
        accepted = self.engine.record_events([_event(e) for e in request.events])
        return feedback_pb2.RecordEventsResponse(accepted=accepted)

    def StreamEvents(self, request_iterator, context):
        accepted = 0
        for n, batch in enumerate(request_iterator):
            try:
                accepted += self.engine.record_events([_event(e) for e in batch.events])
            except InvalidArgument as exc:  # say how far the stream got
                raise exc.within(f"batch[{n}].", f" ({accepted} events before it were accepted)") from None
        return feedback_pb2.StreamEventsResponse(accepted=accepted)

    def RecordImpressions(self, request, context):
        recorded = self.engine.record_impressions(request.request_id, request.user_id, list(request.item_ids))
        return feedback_pb2.RecordImpressionsResponse(recorded=recorded)

    def RecordClicks(self, request, context):
        self.engine.record_click(request.request_id, request.user_id, request.item_id)
        return feedback_pb2.RecordClicksResponse()


def _model_version(info: VersionInfo) -> admin_pb2.ModelVersion:
    return admin_pb2.ModelVersion(
        version=str(info.version), parent_version="" if info.parent is None else str(info.parent),
        state=admin_pb2.ModelVersion.State.Value(info.state), reason=info.reason, created_at=info.created_at,
        event_watermark=info.watermark, items=info.items, links=info.links,
        metrics={k: float(v) for k, v in info.metrics.items() if isinstance(v, (int, float))})


def _feedback(rows: list[dict]) -> list[admin_pb2.VersionFeedback]:
    return [admin_pb2.VersionFeedback(**(row | {"version": str(row["version"])})) for row in rows]


def _experiment(running: tuple[int, float, float] | None) -> admin_pb2.Experiment | None:
    """(version, fraction, started_at) as an Experiment; None (the field unset) when none runs."""
    if running is None:
        return None
    version, fraction, started_at = running
    return admin_pb2.Experiment(version=str(version), fraction=fraction, started_at=started_at)


def _shadow_stats(stats: dict | None) -> admin_pb2.ShadowStats | None:
    return None if stats is None else admin_pb2.ShadowStats(**(stats | {"version": str(stats["version"])}))


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """`monitor` is the [monitor] config section (SLO targets); `cache_enabled` whether the
    cache's hit rate is an SLO."""

    def __init__(self, engine: Engine, config_summary: dict[str, str], latencies, monitor, cache_enabled: bool):
        self.engine = engine
        self.config_summary = config_summary
        self.latencies = latencies
        self.monitor, self.cache_enabled = monitor, cache_enabled

    def GetStatus(self, request, context):
        status = self.engine.status()
        if request.counts_digest:
            status["counts_digest"] = self.engine.learner.digest()
        pinned = status["pinned_version"]
        status = status | {"model_version": str(status["model_version"]), "model_line": str(status["model_line"]),
                           "pinned_version": "" if pinned is None else str(pinned),
                           "alerts": [admin_pb2.Alert(kind=kind, reason=reason, raised_at=raised_at)
                                      for kind, reason, raised_at in status["alerts"]],
                           "ab_test": _experiment(status["ab_test"]), "shadow": _experiment(status["shadow"]),
                           "feedback": _feedback(status["feedback"])}
        slos = [admin_pb2.SloCheck(**c._asdict())
                for c in slo_checks(self.engine, self.latencies, self.monitor, self.cache_enabled)]
        return admin_pb2.GetStatusResponse(config=self.config_summary, slos=slos, **status)

    def ListModelVersions(self, request, context):
        return admin_pb2.ListModelVersionsResponse(versions=[_model_version(v) for v in self.engine.versions()])

    def GetModelVersion(self, request, context):
        return admin_pb2.GetModelVersionResponse(
            version=_model_version(self.engine.version(_version_number(request.version))))

    def RollbackModel(self, request, context):
        new, old = self.engine.rollback(_version_number(request.version))
        return admin_pb2.RollbackModelResponse(serving_version=str(new), previous_version=str(old))

    def ResumeLearning(self, request, context):
        serving, applied = self.engine.resume_learning()
        return admin_pb2.ResumeLearningResponse(serving_version=str(serving), events_applied=applied)

    def RebuildModel(self, request, context):
        info = self.engine.rebuild()
        return admin_pb2.RebuildModelResponse(model_version=str(info.version),
                                              build_seconds=info.metrics["build_seconds"],
                                              state=admin_pb2.ModelVersion.State.Value(info.state))

    def PromoteModel(self, request, context):
        new, old = self.engine.promote(_version_number(request.version))
        return admin_pb2.PromoteModelResponse(serving_version=str(new), previous_version=str(old))

    def StartShadow(self, request, context):
        self.engine.start_experiment("shadow", _version_number(request.version),
                                     request.sample_rate or DEFAULT_SAMPLE_RATE)
        return admin_pb2.StartShadowResponse()

    def StopShadow(self, request, context):
        self.engine.stop_experiment("shadow")
        return admin_pb2.StopShadowResponse()

    def StartABTest(self, request, context):
        self.engine.start_experiment("ab", _version_number(request.version), request.fraction or DEFAULT_FRACTION)
        return admin_pb2.StartABTestResponse()

    def StopABTest(self, request, context):
        self.engine.stop_experiment("ab")
        return admin_pb2.StopABTestResponse()

    def GetMetrics(self, request, context):
        c = dict(self.engine.counters)
        m = self.engine.metrics()
        p50, p95, p99 = (s * 1e3 for s in self.latencies.percentiles(RECOMMEND_METHOD))
        return admin_pb2.GetMetricsResponse(**(c | m | {
            "ctr": c["clicks"] / c["impressions"] if c["impressions"] else 0.0,
            "latency_p50_ms": p50, "latency_p95_ms": p95, "latency_p99_ms": p99,
            "feedback": _feedback(m["feedback"]), "shadow": _shadow_stats(m["shadow"]),
            "exposure": admin_pb2.ExposureStats(**m["exposure"]),
            "arms": [admin_pb2.ArmFeedback(**(a | {"version": str(a["version"])})) for a in m["arms"]],
            "drift": admin_pb2.DriftStats(**m["drift"])}))

    def UpsertItems(self, request, context):
        items = [(i.item_id, tuple(i.categories), i.available, tuple(i.tags)) for i in request.items]
        return admin_pb2.UpsertItemsResponse(upserted=self.engine.upsert_items(items))

    def DeleteItems(self, request, context):
        return admin_pb2.DeleteItemsResponse(deleted=self.engine.delete_items(list(request.item_ids)))

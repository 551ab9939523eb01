"""A fake covisit.v1 server in this process (``start_fake_server``): it records what the client
sends and answers from what it was sent, so client tests need neither the real server nor numba."""

import threading
import time
from collections import Counter
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from covisit.v1 import (admin_pb2, admin_pb2_grpc, feedback_pb2, feedback_pb2_grpc, recommend_pb2,
                        recommend_pb2_grpc)

TOKEN = "s3cret"
COOCCURRENCE = recommend_pb2.RecommendedItem.COOCCURRENCE


@dataclass
class Recorder:
    """What the fake server received: (method, request, metadata) per call, and attempts per key."""

    calls: list = field(default_factory=list)
    attempts: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method, request, context):
        with self.lock:
            self.calls.append((method, request, dict(context.invocation_metadata())))

    def last(self, method):
        with self.lock:
            return next((request, md) for m, request, md in reversed(self.calls) if m == method)


def _answer(request: recommend_pb2.RecommendItemsRequest, request_id: str) -> recommend_pb2.RecommendItemsResponse:
    """Echo the context items back as recommendations with scores k, k-1, ..."""
    items = [recommend_pb2.RecommendedItem(item_id=i, score=request.k - n, source=COOCCURRENCE)
             for n, i in enumerate(request.context_items)]
    return recommend_pb2.RecommendItemsResponse(items=items, model_version="v1", request_id=request_id)


class FakeRecommend(recommend_pb2_grpc.RecommendServiceServicer):
    """GetSimilarItems misbehaves on purpose by item_id: "flaky-N" answers UNAVAILABLE N times
    then succeeds, "invalid" answers INVALID_ARGUMENT, "slow" answers after 5 s unless cancelled."""

    def __init__(self, recorder):
        self.recorder = recorder

    def RecommendItems(self, request, context):
        self.recorder.record("RecommendItems", request, context)
        return _answer(request, "r-0")

    def BatchRecommendItems(self, request, context):
        self.recorder.record("BatchRecommendItems", request, context)
        return recommend_pb2.BatchRecommendItemsResponse(
            responses=[_answer(r, f"r-{n}") for n, r in enumerate(request.requests)])

    def GetSimilarItems(self, request, context):
        self.recorder.record("GetSimilarItems", request, context)
        with self.recorder.lock:
            self.recorder.attempts[request.item_id] += 1
            attempt = self.recorder.attempts[request.item_id]
        if request.item_id.startswith("flaky-") and attempt <= int(request.item_id.removeprefix("flaky-")):
            context.abort(grpc.StatusCode.UNAVAILABLE, "not ready")
        if request.item_id == "invalid":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "item_id: unknown")
        if request.item_id == "slow":
            end = time.monotonic() + 5.0
            while context.is_active() and time.monotonic() < end:
                time.sleep(0.01)
        item = recommend_pb2.RecommendedItem(item_id="n1", score=0.5, source=COOCCURRENCE)
        return recommend_pb2.GetSimilarItemsResponse(items=[item], model_version="v1")


class FakeFeedback(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, recorder):
        self.recorder = recorder

    def RecordEvents(self, request, context):
        self.recorder.record("RecordEvents", request, context)
        return feedback_pb2.RecordEventsResponse(accepted=len(request.events))

    def StreamEvents(self, request_iterator, context):
        batches = list(request_iterator)
        self.recorder.record("StreamEvents", batches, context)
        return feedback_pb2.StreamEventsResponse(accepted=sum(len(b.events) for b in batches))

    def RecordImpressions(self, request, context):
        self.recorder.record("RecordImpressions", request, context)
        return feedback_pb2.RecordImpressionsResponse(recorded=len(request.item_ids))

    def RecordClicks(self, request, context):
        self.recorder.record("RecordClicks", request, context)
        return feedback_pb2.RecordClicksResponse()


class FakeAdmin(admin_pb2_grpc.AdminServiceServicer):
    """Refuses any call without "authorization: Bearer <TOKEN>"; knows versions v1 (serving), v0."""

    VERSIONS = {
        "v1": admin_pb2.ModelVersion(version="v1", parent_version="v0", state=admin_pb2.ModelVersion.SERVING),
        "v0": admin_pb2.ModelVersion(version="v0", state=admin_pb2.ModelVersion.AVAILABLE),
    }

    def __init__(self, recorder):
        self.recorder = recorder

    def _check(self, method, request, context):
        self.recorder.record(method, request, context)
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "admin token required")

    def GetStatus(self, request, context):
        self._check("GetStatus", request, context)
        return admin_pb2.GetStatusResponse(model_version="v1", items=3, config={"k": "10"})

    def ListModelVersions(self, request, context):
        self._check("ListModelVersions", request, context)
        return admin_pb2.ListModelVersionsResponse(versions=list(self.VERSIONS.values()))

    def GetModelVersion(self, request, context):
        self._check("GetModelVersion", request, context)
        if request.version not in self.VERSIONS:
            context.abort(grpc.StatusCode.NOT_FOUND, f"version: unknown {request.version!r}")
        return admin_pb2.GetModelVersionResponse(version=self.VERSIONS[request.version])

    def RollbackModel(self, request, context):
        self._check("RollbackModel", request, context)
        return admin_pb2.RollbackModelResponse(serving_version=request.version, previous_version="v1")

    def ResumeLearning(self, request, context):
        self._check("ResumeLearning", request, context)
        return admin_pb2.ResumeLearningResponse(serving_version="v3", events_applied=7)

    def RebuildModel(self, request, context):
        self._check("RebuildModel", request, context)
        return admin_pb2.RebuildModelResponse(model_version="v2", build_seconds=1.5,
                                              state=admin_pb2.ModelVersion.CANDIDATE)

    def PromoteModel(self, request, context):
        self._check("PromoteModel", request, context)
        return admin_pb2.PromoteModelResponse(serving_version=request.version, previous_version="v1")

    def StartShadow(self, request, context):
        self._check("StartShadow", request, context)
        return admin_pb2.StartShadowResponse()

    def StopShadow(self, request, context):
        self._check("StopShadow", request, context)
        return admin_pb2.StopShadowResponse()

    def StartABTest(self, request, context):
        self._check("StartABTest", request, context)
        return admin_pb2.StartABTestResponse()

    def StopABTest(self, request, context):
        self._check("StopABTest", request, context)
        return admin_pb2.StopABTestResponse()

    def GetMetrics(self, request, context):
        self._check("GetMetrics", request, context)
        return admin_pb2.GetMetricsResponse(recommend_requests=4, cache_hits=1, ctr=0.25)

    def UpsertItems(self, request, context):
        self._check("UpsertItems", request, context)
        return admin_pb2.UpsertItemsResponse(upserted=len(request.items))

    def DeleteItems(self, request, context):
        self._check("DeleteItems", request, context)
        return admin_pb2.DeleteItemsResponse(deleted=sum(i.startswith("known") for i in request.item_ids))


@dataclass
class FakeServer:
    target: str
    recorder: Recorder


def start_fake_server(credentials=None):
    """Start the fake server on a free loopback port; returns (grpc server, FakeServer)."""
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    recommend_pb2_grpc.add_RecommendServiceServicer_to_server(FakeRecommend(recorder), server)
    feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(FakeFeedback(recorder), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(FakeAdmin(recorder), server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, FakeServer(f"127.0.0.1:{port}", recorder)


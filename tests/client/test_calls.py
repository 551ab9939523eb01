"""Every method against the in-process fake server: what goes on the wire and what comes back."""

import grpc
import pytest

from covisit.client import (CovisitClient, Event, Item, ModelVersion, Promotion, Rebuild, Recommendations,
                            RecommendedItem, Resume, Rollback, SimilarItems)

from covisit.client.client import RETRY_SERVICE_CONFIG

from .fakes import TOKEN

MAX_ATTEMPTS = RETRY_SERVICE_CONFIG["methodConfig"][0]["retryPolicy"]["maxAttempts"]


@pytest.fixture
def client(fake_server):
    with CovisitClient(fake_server.target, timeout=2.0, admin_token=TOKEN) as client:
        yield client


def test_recommend_items_sends_every_field_and_no_token(client, fake_server):
    recs = client.recommend_items(["a", "b"], user_id="u1", k=5, exclude_items=["c"], exclude_seen=True,
                                  allowed_items=["a", "b"], categories=["shoes"])
    assert recs == Recommendations((RecommendedItem("a", 5.0, "COOCCURRENCE"),
                                    RecommendedItem("b", 4.0, "COOCCURRENCE")), "v1", "r-0", False)
    request, metadata = fake_server.recorder.last("RecommendItems")
    assert (request.user_id, list(request.exclude_items), request.exclude_seen, list(request.allowed_items),
            list(request.categories)) == ("u1", ["c"], True, ["a", "b"], ["shoes"])
    assert "authorization" not in metadata


def test_batch_answers_in_order(client, fake_server):
    results = client.batch_recommend_items([{"context_items": ["a"]}, {"context_items": ["b", "c"], "k": 3}])
    assert [r.request_id for r in results] == ["r-0", "r-1"]
    assert [[i.item_id for i in r.items] for r in results] == [["a"], ["b", "c"]]
    request, _ = fake_server.recorder.last("BatchRecommendItems")
    assert [r.k for r in request.requests] == [10, 3]


def test_get_similar_items(client):
    assert client.get_similar_items("i1", k=3) == SimilarItems((RecommendedItem("n1", 0.5, "COOCCURRENCE"),), "v1")


def test_events_reach_the_server_with_and_without_session(client, fake_server):
    events = [Event("u1", "i1", "view", 1_700_000_000.0, session_id="s1"),
              Event("u1", "i2", "click", 1_700_000_001.0)]
    assert client.record_events(events) == 2
    request, _ = fake_server.recorder.last("RecordEvents")
    assert [e.HasField("session_id") for e in request.events] == [True, False]
    assert [Event.from_proto(e) for e in request.events] == events


def test_stream_events_sends_each_batch_and_returns_the_total(client, fake_server):
    batches = ([Event("u1", f"i{b}{n}", "view", 1_700_000_000.0 + n) for n in range(size)]
               for b, size in enumerate([3, 0, 2]))
    assert client.stream_events(batches) == 5
    received, _ = fake_server.recorder.last("StreamEvents")
    assert [len(b.events) for b in received] == [3, 0, 2]


def test_impressions_and_clicks(client, fake_server):
    assert client.record_impressions("r-0", ["a", "b", "c"], user_id="u1") == 3
    request, _ = fake_server.recorder.last("RecordImpressions")
    assert (request.request_id, request.user_id, list(request.item_ids)) == ("r-0", "u1", ["a", "b", "c"])
    assert client.record_clicks("r-0", "b", user_id="u1") is None
    request, _ = fake_server.recorder.last("RecordClicks")
    assert (request.request_id, request.user_id, request.item_id) == ("r-0", "u1", "b")


def test_admin_calls_send_the_token_and_convert_the_answers(client, fake_server):
    status = client.get_status()
    assert (status.model_version, status.items, status.config) == ("v1", 3, {"k": "10"})
    _, metadata = fake_server.recorder.last("GetStatus")
    assert metadata["authorization"] == f"Bearer {TOKEN}"
    assert [(v.version, v.state) for v in client.list_model_versions()] == [("v1", "SERVING"), ("v0", "AVAILABLE")]
    assert client.get_model_version("v1") == ModelVersion("v1", "v0", "SERVING", "", 0.0, 0, 0, 0, {})
    assert client.rollback_model("v0") == Rollback("v0", "v1")
    assert client.rebuild_model() == Rebuild("v2", 1.5, "CANDIDATE")
    metrics = client.get_metrics()
    assert (metrics.recommend_requests, metrics.cache_hits, metrics.ctr, metrics.shadow) == (4, 1, 0.25, None)
    assert client.upsert_items([Item("i1", ("shoes",)), Item("i2", available=False)]) == 2
    request, _ = fake_server.recorder.last("UpsertItems")
    assert [Item.from_proto(i) for i in request.items] == [Item("i1", ("shoes",)), Item("i2", available=False)]
    assert client.delete_items(["known-1", "other"]) == 1


def test_learning_and_experiment_calls_send_the_token_and_their_fields(client, fake_server):
    assert client.resume_learning() == Resume("v3", 7)
    assert client.promote_model("v0") == Promotion("v0", "v1")
    assert fake_server.recorder.last("PromoteModel")[0].version == "v0"
    assert client.start_shadow("v0") is None
    request, metadata = fake_server.recorder.last("StartShadow")
    assert (request.version, request.sample_rate, metadata["authorization"]) == ("v0", 0.1, f"Bearer {TOKEN}")
    client.start_shadow("v0", sample_rate=0.5)
    assert fake_server.recorder.last("StartShadow")[0].sample_rate == 0.5
    assert client.start_ab_test("v0") is None
    request, _ = fake_server.recorder.last("StartABTest")
    assert (request.version, request.fraction) == ("v0", 0.1)
    client.start_ab_test("v0", fraction=0.25)
    assert fake_server.recorder.last("StartABTest")[0].fraction == 0.25
    assert client.stop_shadow() is None and client.stop_ab_test() is None
    for method in ("ResumeLearning", "StopShadow", "StopABTest"):
        assert fake_server.recorder.last(method)[1]["authorization"] == f"Bearer {TOKEN}"


def test_errors_are_the_stubs_rpc_errors_unwrapped(client, fake_server):
    with pytest.raises(grpc.RpcError) as info:
        client.get_model_version("v9")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "v9" in info.value.details()
    with CovisitClient(fake_server.target, timeout=2.0) as no_token:
        with pytest.raises(grpc.RpcError) as info:
            no_token.get_status()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    _, metadata = fake_server.recorder.last("GetStatus")
    assert "authorization" not in metadata


def test_unavailable_is_retried_until_it_succeeds(client, fake_server):
    assert client.get_similar_items("flaky-2").model_version == "v1"
    assert fake_server.recorder.attempts["flaky-2"] == 3


def test_retries_stop_at_max_attempts(client, fake_server):
    with pytest.raises(grpc.RpcError) as info:
        client.get_similar_items("flaky-99")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert fake_server.recorder.attempts["flaky-99"] == MAX_ATTEMPTS


def test_other_errors_are_not_retried(client, fake_server):
    with pytest.raises(grpc.RpcError) as info:
        client.get_similar_items("invalid")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fake_server.recorder.attempts["invalid"] == 1


def test_the_default_deadline_ends_a_slow_call(fake_server):
    # The fake answers "slow" after 5 s: without a deadline this call would succeed.
    with CovisitClient(fake_server.target, timeout=0.2) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.get_similar_items("slow")
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_per_call_timeout_overrides_the_default(fake_server):
    with CovisitClient(fake_server.target, timeout=30.0) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.get_similar_items("slow", timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


class Seen(grpc.UnaryUnaryClientInterceptor):
    """Records each call's method and whether it failed."""

    def __init__(self):
        self.calls = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        call = continuation(client_call_details, request)
        self.calls.append((client_call_details.method, call.exception() is not None))
        return call


def test_interceptors_see_every_call_and_its_outcome(fake_server):
    seen = Seen()
    with CovisitClient(fake_server.target, timeout=2.0, admin_token=TOKEN, interceptors=[seen]) as client:
        client.recommend_items(["a"])
        client.get_status()  # the admin token still goes on admin calls
        with pytest.raises(grpc.RpcError):
            client.get_similar_items("invalid")  # the fake refuses it
    assert seen.calls == [("/covisit.v1.RecommendService/RecommendItems", False),
                          ("/covisit.v1.AdminService/GetStatus", False),
                          ("/covisit.v1.RecommendService/GetSimilarItems", True)]

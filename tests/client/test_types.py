"""Protobuf messages to the client's dataclasses and back."""

import dataclasses

import pytest

from covisit.client import (Alert, ArmFeedback, DriftStats, Event, Experiment, ExposureStats, Item, Metrics,
                            ModelVersion, Promotion, Rebuild, Recommendations, RecommendedItem, Resume, Rollback,
                            ShadowStats, SimilarItems, SloCheck, Status, VersionFeedback)
from covisit.v1 import admin_pb2, feedback_pb2, recommend_pb2

SOURCE = recommend_pb2.RecommendedItem.Source
STATE = admin_pb2.ModelVersion.State


@pytest.mark.parametrize("cls, message", [
    (RecommendedItem, recommend_pb2.RecommendedItem),
    (Recommendations, recommend_pb2.RecommendItemsResponse),
    (SimilarItems, recommend_pb2.GetSimilarItemsResponse),
    (Event, feedback_pb2.Event),
    (Item, admin_pb2.Item),
    (Status, admin_pb2.GetStatusResponse),
    (ModelVersion, admin_pb2.ModelVersion),
    (Metrics, admin_pb2.GetMetricsResponse),
    (Rollback, admin_pb2.RollbackModelResponse),
    (Rebuild, admin_pb2.RebuildModelResponse),
    (Resume, admin_pb2.ResumeLearningResponse),
    (Promotion, admin_pb2.PromoteModelResponse),
    (Alert, admin_pb2.Alert),
    (Experiment, admin_pb2.Experiment),
    (VersionFeedback, admin_pb2.VersionFeedback),
    (ShadowStats, admin_pb2.ShadowStats),
])
def test_every_message_field_has_a_dataclass_field(cls, message):
    assert [f.name for f in dataclasses.fields(cls)] == [f.name for f in message.DESCRIPTOR.fields]


def test_event_with_session_id_sets_the_optional_field():
    event = Event("u1", "i1", "view", 1_700_000_000.5, session_id="s1")
    msg = event.to_proto()
    assert msg.HasField("session_id")
    assert (msg.user_id, msg.item_id, msg.event_type, msg.timestamp, msg.session_id) == (
        "u1", "i1", "view", 1_700_000_000.5, "s1")
    assert Event.from_proto(msg) == event


def test_event_without_session_id_leaves_the_field_unset():
    event = Event("u1", "i1", "purchase", 1_700_000_000.0)
    msg = event.to_proto()
    assert not msg.HasField("session_id")
    assert Event.from_proto(msg).session_id is None
    assert Event.from_proto(msg) == event


def test_an_empty_session_id_is_sent_as_set_not_as_absent():
    msg = Event("u1", "i1", "view", 1_700_000_000.0, session_id="").to_proto()
    assert msg.HasField("session_id")
    assert Event.from_proto(msg).session_id == ""


def test_event_survives_the_wire_format():
    event = Event("u1", "i1", "view", 1_700_000_000.25, session_id="s1")
    wire = event.to_proto().SerializeToString()
    assert Event.from_proto(feedback_pb2.Event.FromString(wire)) == event
    bare = Event("u1", "i1", "view", 1_700_000_000.25)
    assert Event.from_proto(feedback_pb2.Event.FromString(bare.to_proto().SerializeToString())) == bare


def test_item_round_trip_and_available_is_sent_true_by_default():
    item = Item("i1", categories=("shoes", "sale"), available=False, tags=("red",))
    assert Item.from_proto(item.to_proto()) == item
    msg = Item("i2").to_proto()
    assert msg.available is True
    assert Item.from_proto(msg) == Item("i2", (), True, ())


@pytest.mark.parametrize("name", [n for n in SOURCE.keys()])
def test_recommended_item_source_is_the_enum_name(name):
    msg = recommend_pb2.RecommendedItem(item_id="i1", score=0.5, source=SOURCE.Value(name))
    assert RecommendedItem.from_proto(msg) == RecommendedItem("i1", 0.5, name)


@pytest.mark.parametrize("name", [n for n in STATE.keys()])
def test_model_version_state_is_the_enum_name(name):
    assert ModelVersion.from_proto(admin_pb2.ModelVersion(state=STATE.Value(name))).state == name


def test_an_enum_number_newer_than_the_stubs_becomes_its_number_as_text():
    # proto3 enums are open: a newer server may send a value these stubs have no name for.
    msg = recommend_pb2.RecommendedItem.FromString(
        recommend_pb2.RecommendedItem(item_id="i1", source=99).SerializeToString())
    assert RecommendedItem.from_proto(msg).source == "99"
    assert ModelVersion.from_proto(admin_pb2.ModelVersion(state=42)).state == "42"


def test_recommendations_keep_order_and_every_field():
    msg = recommend_pb2.RecommendItemsResponse(
        items=[recommend_pb2.RecommendedItem(item_id="b", score=2.0, source=SOURCE.Value("COOCCURRENCE")),
               recommend_pb2.RecommendedItem(item_id="a", score=0.0, source=SOURCE.Value("POPULARITY"))],
        model_version="v7", request_id="r-1", from_cache=True)
    assert Recommendations.from_proto(msg) == Recommendations(
        (RecommendedItem("b", 2.0, "COOCCURRENCE"), RecommendedItem("a", 0.0, "POPULARITY")), "v7", "r-1", True)
    similar = recommend_pb2.GetSimilarItemsResponse(items=msg.items, model_version="v7")
    assert SimilarItems.from_proto(similar) == SimilarItems(Recommendations.from_proto(msg).items, "v7")


def test_admin_responses_convert_every_field():
    feedback = admin_pb2.VersionFeedback(version="v1", impressions=10, clicks=2, ctr=0.2, window_impressions=5,
                                         window_clicks=1, window_ctr=0.2)
    status = admin_pb2.GetStatusResponse(
        model_version="v2", items=1, links=2, events=3, uptime_seconds=4.5, freshness_seconds=6.5,
        config={"k": "10", "decay": "0.5"}, users=7, catalog_items=8, pinned_version="v2", learning="pinned",
        events_pending=9, log_events=12, alerts=[admin_pb2.Alert(kind="auto_rollback", reason="ctr fell",
                                                                 raised_at=1.5)],
        ab_test=admin_pb2.Experiment(version="v1", fraction=0.25, started_at=2.5), feedback=[feedback],
        counts_digest="ab12", slos=[admin_pb2.SloCheck(name="latency_p95_ms", value=1.5, target=50.0, ok=True,
                                                       description="p95")], replica="r1", leader="r2", model_line="v1")
    assert Status.from_proto(status) == Status(
        "v2", 1, 2, 3, 4.5, 6.5, {"k": "10", "decay": "0.5"}, 7, 8, "v2", "pinned", 9, 12,
        (Alert("auto_rollback", "ctr fell", 1.5),), Experiment("v1", 0.25, 2.5), None,
        (VersionFeedback("v1", 10, 2, 0.2, 5, 1, 0.2),), "ab12", (SloCheck("latency_p95_ms", 1.5, 50.0, True, "p95"),),
        "r1", "r2", "v1")
    version = admin_pb2.ModelVersion(version="v2", parent_version="v1", state=STATE.Value("REJECTED"),
                                     reason="recall fell", created_at=1.5, event_watermark=9, items=10,
                                     links=11, metrics={"recall@10": 0.25})
    assert ModelVersion.from_proto(version) == ModelVersion("v2", "v1", "REJECTED", "recall fell", 1.5, 9, 10, 11,
                                                            {"recall@10": 0.25})
    metrics = admin_pb2.GetMetricsResponse(
        recommend_requests=1, cache_hits=2, events_accepted=3, events_rejected=4, impressions=5, clicks=6,
        ctr=0.5, latency_p50_ms=0.25, latency_p95_ms=1.5, latency_p99_ms=2.5, feedback=[feedback], publishes=7,
        auto_rollbacks=1, shadow=admin_pb2.ShadowStats(version="v1", requests=8, dropped=2, mean_overlap=0.75,
                                                        latency_p50_ms=0.5, latency_p99_ms=1.25),
        freshness_lag_seconds=0.5, hit_rate=0.25,
        exposure=admin_pb2.ExposureStats(responses=3, slots=9, distinct_items=4, coverage=0.5, gini=0.25,
                                         entropy_bits=1.5, source_shares={"POPULARITY": 0.75}),
        arms=[admin_pb2.ArmFeedback(version="v1", arm="ab", impressions=4, clicks=1, ctr=0.25)],
        drift=admin_pb2.DriftStats(ctr_recent=0.5, ctr_baseline=0.75, recent_impressions=2, baseline_impressions=3,
                                   item_divergence=0.125),
        events_rejected_by={"timestamp": 2}, predictions_logged=9, predictions_dropped=1, waiting_seconds=0.75)
    assert Metrics.from_proto(metrics) == Metrics(1, 2, 3, 4, 5, 6, 0.5, 0.25, 1.5, 2.5,
                                                  (VersionFeedback("v1", 10, 2, 0.2, 5, 1, 0.2),), 7, 1,
                                                  ShadowStats("v1", 8, 2, 0.75, 0.5, 1.25), 0.5, 0.25,
                                                  ExposureStats(3, 9, 4, 0.5, 0.25, 1.5, {"POPULARITY": 0.75}),
                                                  (ArmFeedback("v1", "ab", 4, 1, 0.25),),
                                                  DriftStats(0.5, 0.75, 2, 3, 0.125), {"timestamp": 2}, 9, 1, 0.75)
    assert DriftStats.from_proto(admin_pb2.DriftStats()).item_divergence is None  # unset until windows fill
    assert Rollback.from_proto(admin_pb2.RollbackModelResponse(serving_version="v1", previous_version="v2")) == (
        Rollback("v1", "v2"))
    assert Rebuild.from_proto(admin_pb2.RebuildModelResponse(model_version="v3", build_seconds=2.5,
                                                             state=STATE.Value("CANDIDATE"))) == (
        Rebuild("v3", 2.5, "CANDIDATE"))
    assert Resume.from_proto(admin_pb2.ResumeLearningResponse(serving_version="v4", events_applied=3)) == (
        Resume("v4", 3))
    assert Promotion.from_proto(admin_pb2.PromoteModelResponse(serving_version="v3", previous_version="v4")) == (
        Promotion("v3", "v4"))


def test_experiments_and_shadow_stats_are_none_when_none_runs():
    status = Status.from_proto(admin_pb2.GetStatusResponse())
    assert (status.ab_test, status.shadow, status.alerts, status.feedback) == (None, None, (), ())
    # an Experiment sent without a version means the same as none
    assert Status.from_proto(admin_pb2.GetStatusResponse(shadow=admin_pb2.Experiment())).shadow is None
    assert Metrics.from_proto(admin_pb2.GetMetricsResponse()).shadow is None
    empty_shadow = admin_pb2.GetMetricsResponse(shadow=admin_pb2.ShadowStats(version="v1"))
    assert Metrics.from_proto(empty_shadow).shadow == ShadowStats("v1", 0, 0, 0.0, 0.0, 0.0)


def test_converted_values_are_frozen_and_detached_from_the_message():
    msg = admin_pb2.GetStatusResponse(config={"k": "10"})
    status = Status.from_proto(msg)
    msg.config["k"] = "20"
    assert status.config == {"k": "10"}
    assert type(status.config) is dict
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.model_version = "v9"

"""The real server on a loopback port, called through the real client, for every RPC and error."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from covisit.client import CovisitClient, Event, Item
from covisit.core.model import CoVisitModel
from covisit.server.app import create_server
from covisit.server.config import ConfigError, load_config
from tests.server.serving import NOW, TOKEN, eventually, scrape, start

@pytest.fixture
def served(tmp_path):
    server, port = start(tmp_path)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = CovisitClient(f"127.0.0.1:{port}", timeout=10, admin_token=TOKEN)
    yield client, port, channel
    client.close()
    channel.close()
    server.stop(0)


def code_of(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_health_and_reflection_list_the_services(served):
    _, _, channel = served
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"covisit.v1.RecommendService", "covisit.v1.FeedbackService", "covisit.v1.AdminService",
            "grpc.health.v1.Health"} <= services


def test_recommend_similar_batch_and_cache(served):
    client, _, _ = served
    rec = client.recommend_items(["a", "b"], k=3)
    assert [i.item_id for i in rec.items[:2]] == ["c", "d"]
    assert rec.items[0].source == "COOCCURRENCE" and rec.model_version == "1" and rec.request_id
    assert not rec.from_cache
    again = client.recommend_items(["a", "b"], k=3)
    assert again.from_cache and again.items == rec.items and again.request_id != rec.request_id
    assert client.get_similar_items("b", k=1).items[0].item_id == "c"
    batch = client.batch_recommend_items([{"context_items": ["c"], "k": 1}, {"context_items": ["d"], "k": 1}])
    assert [r.items[0].item_id for r in batch] == ["d", "e"]
    # an unknown item still gets an answer: the popular ones
    cold = client.recommend_items(["never-seen"], k=2)
    assert cold.items[0].item_id == "x" and cold.items[0].source == "POPULARITY"


def test_events_update_the_model_and_the_users_history(served):
    client, _, _ = served
    before = client.get_status()
    assert client.recommend_items(["y"], k=1).items[0].source == "POPULARITY"  # y is new
    events = [Event(f"w{n}", item, "click", NOW - 10 + n, f"w{n}") for n in range(3) for item in "yz"]
    assert client.record_events(events) == 6
    status = eventually(lambda: (st := client.get_status()).events == before.events + 6 and st)
    assert int(status.model_version) > int(before.model_version)
    learned = client.recommend_items(["y"], k=1).items[0]
    assert (learned.item_id, learned.source) == ("z", "COOCCURRENCE")
    # a user's recorded history is the context when none is given
    client.record_events([Event("newbie", "a", "view", NOW), Event("newbie", "b", "view", NOW + 1)])
    assert client.recommend_items(user_id="newbie", k=1).items[0].item_id == "c"
    seen_excluded = client.recommend_items(["c"], user_id="newbie", k=3, exclude_seen=True)
    assert not {"a", "b"} & {i.item_id for i in seen_excluded.items}
    assert client.stream_events([events[:2], events[2:]]) == 6


def test_bad_requests_get_invalid_argument_naming_the_field_and_change_nothing(served):
    client, _, _ = served
    status = client.get_status()
    cases = [
        (lambda: client.recommend_items(["a"], k=5000), "k"),
        (lambda: client.recommend_items(["a"], k=-1), "k"),
        (lambda: client.recommend_items([f"i{n}" for n in range(101)]), "context_items"),
        (lambda: client.recommend_items(["a", ""]), "context_items[1]"),
        (lambda: client.recommend_items(["a" * 257]), "context_items[0]"),
        (lambda: client.recommend_items(), "user_id"),
        (lambda: client.get_similar_items(""), "item_id"),
        (lambda: client.record_events([Event("u", "a", "view", NOW), Event("u", "b", "like", NOW)]),
         "events[1].event_type"),
        (lambda: client.record_events([Event("u", "a", "view", 100.0)]), "events[0].timestamp"),
        (lambda: client.record_events([Event("u", "a", "view", NOW + 3 * 86400)]), "events[0].timestamp"),
        (lambda: client.record_events([Event("", "a", "view", NOW)]), "events[0].user_id"),
        (lambda: client.record_events([Event("u", "a", "view", NOW)] * 10_001), "events"),
        (lambda: client.batch_recommend_items([{"context_items": ["a"]}, {"context_items": ["a"], "k": 0},
                                               {"context_items": ["a"], "k": 9999}]), "requests[2].k"),
        (lambda: client.stream_events([[Event("u", "a", "view", NOW)], [Event("u", "b", "nope", NOW)]]),
         "batch[1].events[0].event_type"),
        (lambda: client.get_model_version("abc"), "version"),
    ]
    for call, field in cases:
        code, details = code_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, code, details)
        assert details.startswith(field + ":"), (field, details)
    after = client.get_status()
    assert after.log_events == status.log_events + 1  # only the stream's first, good batch logged
    assert client.get_metrics().events_rejected >= 5


def test_oversized_message_is_refused_by_grpc(served):
    client, _, _ = served
    code, _ = code_of(lambda: client.recommend_items(["a"], exclude_items=["z" * 200] * 25_000))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_impressions_clicks_and_metrics(served):
    client, _, _ = served
    rec = client.recommend_items(["a"], k=3)
    assert client.record_impressions(rec.request_id, [i.item_id for i in rec.items], user_id="u1") == 3
    client.record_clicks(rec.request_id, rec.items[0].item_id, user_id="u1")
    code, details = code_of(lambda: client.record_clicks("no-such-request", "a"))
    assert code == grpc.StatusCode.NOT_FOUND and "request_id" in details
    metrics = client.get_metrics()
    assert (metrics.impressions, metrics.clicks) == (3, 1)
    assert metrics.ctr == pytest.approx(1 / 3)
    assert metrics.latency_p50_ms > 0


def test_admin_needs_the_token(served):
    _, port, _ = served
    anonymous = CovisitClient(f"127.0.0.1:{port}", timeout=10)
    wrong = CovisitClient(f"127.0.0.1:{port}", timeout=10, admin_token="guess")
    try:
        assert code_of(anonymous.get_status)[0] == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(wrong.get_status)[0] == grpc.StatusCode.PERMISSION_DENIED
        assert anonymous.recommend_items(["a"]).items  # the rest of the API needs no token
    finally:
        anonymous.close()
        wrong.close()


def test_versions_rollback_resume_and_rebuild(served):
    client, _, _ = served
    client.record_events([Event("v", "a", "view", NOW), Event("v", "x", "view", NOW + 1)])
    eventually(lambda: client.get_status().model_version == "2")  # below min_events: after max_delay
    versions = client.list_model_versions()
    assert [(v.version, v.state) for v in versions] == [("2", "SERVING"), ("1", "AVAILABLE")]
    assert client.get_model_version("1").parent_version == ""
    assert client.get_model_version("2").parent_version == "1"
    rollback = client.rollback_model("1")
    assert (rollback.serving_version, rollback.previous_version) == ("1", "2")
    assert client.recommend_items(["a"]).model_version == "1"
    assert client.get_status().pinned_version == "1"
    assert code_of(lambda: client.rollback_model("99"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: client.get_model_version("99"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(client.rebuild_model)[0] == grpc.StatusCode.FAILED_PRECONDITION  # pinned
    resumed = client.resume_learning()
    assert int(resumed.serving_version) > 2
    rebuilt = client.rebuild_model()
    assert int(rebuilt.model_version) > int(resumed.serving_version) and rebuilt.state == "CANDIDATE"
    assert client.get_status().events == 60 * 4 + 20 + 100 + 2  # every event, the two new ones too


def test_catalog_rules_and_content_fallback(served):
    client, _, _ = served
    assert client.upsert_items([Item("c", available=False), Item("d", categories=("cat1",)),
                                Item("e", categories=("cat1",)),
                                Item("fresh", tags=("lamp",)), Item("lampshade", tags=("lamp",))]) == 5
    items = [i.item_id for i in client.recommend_items(["a", "b"], k=5).items]
    assert "c" not in items
    only_cat1 = client.recommend_items(["a", "b"], k=5, categories=["cat1"])
    assert {i.item_id for i in only_cat1.items} <= {"d", "e"}
    cold = client.recommend_items(["fresh"], k=2)  # unknown to the model, known to the catalog
    assert (cold.items[0].item_id, cold.items[0].source) == ("lampshade", "CONTENT")
    assert client.delete_items(["d", "nope"]) == 1
    assert "d" not in [i.item_id for i in client.recommend_items(["c"], k=5).items]


def test_exploration_slot_is_marked_and_seeded(tmp_path):
    server, port = start(tmp_path, **{"exploration.rate": 1.0, "exploration.seed": 7,
                                          "exploration.pool": "all", "cache.enabled": False})
    try:
        with CovisitClient(f"127.0.0.1:{port}", timeout=10) as client:
            rec = client.recommend_items(["a"], k=3)
            assert rec.items[-1].source == "EXPLORATION"
            assert rec.items[-1].item_id not in {"a"} | {i.item_id for i in rec.items[:-1]}
    finally:
        server.stop(0)


def test_a_second_start_serves_the_checkpoint(tmp_path):
    start(tmp_path)[0].stop(0)
    checkpoints = tmp_path / "data" / "checkpoints"
    saved = [p / "checkpoint.json" for p in checkpoints.iterdir()]
    assert len(saved) == 1
    first = saved[0].stat().st_mtime_ns
    server, port = start(tmp_path)
    try:
        with CovisitClient(f"127.0.0.1:{port}", admin_token=TOKEN) as client:
            assert client.get_status().model_version == "1"  # loaded, not rebuilt
    finally:
        server.stop(0)
    assert [p / "checkpoint.json" for p in checkpoints.iterdir()] == saved
    assert saved[0].stat().st_mtime_ns == first


def test_not_serving_until_a_model_is_loaded(tmp_path):
    config = load_config(None, {}, {"server.port": 0, "server.data_dir": str(tmp_path), "monitor.metrics_port": 0})
    server, port = create_server(config, load=False)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with CovisitClient(f"127.0.0.1:{port}", timeout=10) as client:
            code, details = code_of(lambda: client.recommend_items(["a"]))
        assert code == grpc.StatusCode.UNAVAILABLE and "no model" in details
        channel.close()
    finally:
        server.stop(0)


def test_admin_without_a_configured_token(tmp_path):
    server, port = start(tmp_path / "closed", token="")
    try:
        with CovisitClient(f"127.0.0.1:{port}", timeout=10) as client:
            code, details = code_of(client.get_status)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "COVISIT_ADMIN_TOKEN" in details
    finally:
        server.stop(0)
    server, port = start(tmp_path / "open", token="", **{"server.insecure_admin": True})
    try:
        with CovisitClient(f"127.0.0.1:{port}", timeout=10) as client:
            assert client.get_status().model_version == "1"
    finally:
        server.stop(0)
    wide_open = load_config(None, {}, {"server.host": "0.0.0.0", "server.insecure_admin": True})
    with pytest.raises(ConfigError, match="insecure_admin: only allowed on a loopback host"):
        create_server(wide_open)


def test_a_taken_port_fails_cleanly_and_frees_the_log(tmp_path):
    server, port = start(tmp_path / "first")
    try:
        clash = load_config(None, {}, {"server.port": port, "server.data_dir": str(tmp_path / "second")})
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port}"):
            create_server(clash)
        again, _ = create_server(load_config(None, {}, {"server.port": 0, "server.data_dir": str(tmp_path / "second"),
                                                         "monitor.metrics_port": 0}), load=False)
        again.stop(0)  # the log in "second" could be opened again
    finally:
        server.stop(0)


def test_replicas_share_a_port_only_when_asked(tmp_path):
    """With reuse_port, a second server binds the same port and the kernel spreads new
    connections over both; without it the same bind is a start error (test above)."""
    first, port = start(tmp_path / "first", **{"server.reuse_port": True})
    second, _ = start(tmp_path / "second", **{"server.port": port, "server.reuse_port": True})
    try:
        for _ in range(20):  # a connection each (no shared subchannel), spread by the kernel
            with CovisitClient(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as client:
                client.recommend_items(["a"], k=3)
        served = [recommend_calls(server.metrics_port) for server in (first, second)]
        assert sum(served) == 20 and min(served) > 0
    finally:
        first.stop(0)
        second.stop(0)


def recommend_calls(metrics_port: int) -> float:
    """RecommendItems calls a server has answered OK, from its own metrics endpoint (a replica
    still loading its model answers UNAVAILABLE, which the client retries)."""
    return scrape(metrics_port).get(("covisit_rpc_requests_total", (("code", "OK"), ("method", "RecommendItems"))), 0.0)


def test_a_client_spreads_calls_over_replicas_round_robin(tmp_path):
    servers = [start(tmp_path / name) for name in ("a", "b")]
    try:
        with CovisitClient.for_replicas([f"127.0.0.1:{port}" for _, port in servers], admin_token=TOKEN) as client:
            def served():
                return [recommend_calls(server.metrics_port) for server, _ in servers]

            for _ in range(200):  # until both connections are up (calls go to ready ones only)
                client.recommend_items(["a"], k=3)
                if min(before := served()) > 0:
                    break
            for _ in range(20):
                client.recommend_items(["a"], k=3)
            assert [after - was for after, was in zip(served(), before)] == [10, 10]
    finally:
        for server, _ in servers:
            server.stop(0)
    with pytest.raises(ValueError, match="addresses"):
        CovisitClient.for_replicas("127.0.0.1:1")


def test_a_taken_metrics_port_fails_cleanly_and_frees_the_log(tmp_path):
    server, _ = start(tmp_path / "first")
    try:
        taken = server.metrics_port
        clash = load_config(None, {}, {"server.port": 0, "server.data_dir": str(tmp_path / "second"),
                                       "monitor.metrics_port": taken})
        with pytest.raises(OSError, match=f"cannot bind the metrics endpoint 127.0.0.1:{taken}"):
            create_server(clash)
        again, _ = create_server(load_config(None, {}, {"server.port": 0, "server.data_dir": str(tmp_path / "second"),
                                                         "monitor.metrics_enabled": False}), load=False)
        assert again.metrics_port is None
        again.stop(0)
    finally:
        server.stop(0)


def test_counts_digest_equals_a_batch_build_of_the_log(tmp_path):
    server, port = start(tmp_path)
    client = CovisitClient(f"127.0.0.1:{port}", timeout=10, admin_token=TOKEN)
    client.record_events([Event("d", "a", "view", NOW), Event("d", "e", "view", NOW + 1)])
    eventually(lambda: client.get_status().events_pending == 0)
    digest = client.get_status(counts_digest=True).counts_digest
    assert client.get_status().counts_digest == ""  # only when asked
    model = CoVisitModel(server.engine.model_config)
    model.update([event for _, event in server.engine.event_log.read(0)])
    client.close()
    server.stop(0)
    assert digest == model.digest()

"""The monitor through the real server: the Prometheus endpoint scraped over HTTP after known
traffic, SLO checks and alerts in GetStatus, the Grafana dashboard's queries, the prediction
log with `covisit report`, and `covisit top`."""

import json
import re
import time
from pathlib import Path

import pytest

from covisit.client import CovisitClient, Event
from covisit.server.cli import main
from tests.server.serving import NOW, TOKEN, scrape, start

DASHBOARD = Path(__file__).parents[2] / "server" / "monitoring" / "grafana-dashboard.json"
DEADLINE = 20.0


def value(samples, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def wait_until(check, what: str):
    deadline = time.monotonic() + DEADLINE
    while not (result := check()):
        assert time.monotonic() < deadline, f"still not {what} after {DEADLINE:.0f}s"
        time.sleep(0.05)
    return result


@pytest.fixture
def served(tmp_path):
    server, port = start(tmp_path, **{"learning.max_delay_seconds": 0.1, "monitor.check_seconds": 0.1})
    client = CovisitClient(f"127.0.0.1:{port}", timeout=10, admin_token=TOKEN)
    yield server, client, f"127.0.0.1:{port}"
    client.close()
    server.stop(0)


def gini_by_hand(exposures: list[int], n_items: int) -> float:
    """Mean absolute difference over all pairs of items (unshown items count 0), / 2 mean."""
    x = exposures + [0] * (n_items - len(exposures))
    mean = sum(x) / len(x)
    return sum(abs(a - b) for a in x for b in x) / (2 * len(x) ** 2 * mean)


def test_metrics_move_with_known_traffic(served):
    server, client, _ = served
    port = server.metrics_port
    before = scrape(port)
    line = client.get_status().model_version  # the start's full build heads the serving line
    recs = [client.recommend_items(["a"], k=5), client.recommend_items(["b"], k=5)]
    for rec in recs:
        client.record_impressions(rec.request_id, [i.item_id for i in rec.items][:5], user_id="u")
    client.record_clicks(recs[0].request_id, recs[0].items[0].item_id, user_id="u")
    client.record_clicks(recs[1].request_id, recs[1].items[1].item_id, user_id="u")
    shown = sum(min(5, len(r.items)) for r in recs)
    assert shown == 10  # the fixture's model links a and b to enough items
    with pytest.raises(Exception):
        client.recommend_items(["a"], k=5000)  # INVALID_ARGUMENT: k
    with pytest.raises(Exception):
        client.record_events([Event("u", "a", "teleport", NOW)])  # rejected: event_type

    after = scrape(port)
    assert value(after, "covisit_impressions_total", version=line, arm="serving") == 10
    assert value(after, "covisit_clicks_total", version=line, arm="serving") == 2
    assert value(after, "covisit_ctr", version=line, arm="serving") == pytest.approx(0.2)
    assert value(after, "covisit_hit_rate") == pytest.approx(1.0)  # both requests got a click
    ok = ("covisit_rpc_requests_total", (("code", "OK"), ("method", "RecommendItems")))
    assert after[ok] - before.get(ok, 0) == 2
    assert value(after, "covisit_rpc_requests_total", method="RecommendItems", code="INVALID_ARGUMENT") == 1
    assert value(after, "covisit_events_rejected_total", reason="event_type") == 1
    count = ("covisit_rpc_latency_seconds_count", (("method", "RecommendItems"),))
    assert after[count] - before.get(count, 0) == 3  # the refused call is timed too
    sub_ms = value(after, "covisit_rpc_latency_seconds_bucket", method="RecommendItems", le="0.001")
    assert 0 < sub_ms <= after[count]  # buckets below 1 ms exist and fill
    assert value(after, "covisit_model_info", version=line, line=line, pinned="") == 1
    assert value(after, "covisit_model_versions", state="SERVING") == 1
    assert value(after, "covisit_alert", kind="drift") == 0

    # exposure of exactly these responses (nothing else was recommended)
    counts: dict[str, int] = {}
    for rec in recs:
        for item in rec.items:
            counts[item.item_id] = counts.get(item.item_id, 0) + 1
    n_items = client.get_status().items
    assert value(after, "covisit_exposure_responses") == 2
    assert value(after, "covisit_exposure_gini") == pytest.approx(gini_by_hand(list(counts.values()), n_items))
    assert value(after, "covisit_exposure_coverage") == pytest.approx(len(counts) / n_items)
    metrics = client.get_metrics()
    assert metrics.exposure.gini == pytest.approx(value(after, "covisit_exposure_gini"))
    assert metrics.hit_rate == pytest.approx(1.0) and metrics.events_rejected_by == {"event_type": 1}
    assert [(a.version, a.arm, a.impressions, a.clicks) for a in metrics.arms] == [(line, "serving", 10, 2)]


def test_publishes_fsyncs_and_freshness_are_measured(served):
    server, client, _ = served
    before = scrape(server.metrics_port)
    published = value(before, "covisit_model_publishes_total")
    client.record_events([Event(f"f{u}", item, "view", NOW + n, f"f{u}") for u in range(5)
                          for n, item in enumerate("ab")])
    wait_until(lambda: value(scrape(server.metrics_port), "covisit_model_publishes_total") > published,
               "published")
    after = scrape(server.metrics_port)
    assert value(after, "covisit_model_build_seconds_count", kind="incremental") >= 1
    assert value(after, "covisit_model_swap_seconds_count") >= 1
    assert value(after, "covisit_log_fsync_seconds_count") > value(before, "covisit_log_fsync_seconds_count")
    assert value(after, "covisit_log_bytes") > value(before, "covisit_log_bytes")
    assert value(after, "covisit_model_freshness_seconds") == pytest.approx(time.time() - (NOW + 1), abs=5)
    assert value(after, "covisit_events_pending") == 0


def test_status_reports_slos_and_a_freshness_alert_while_pinned(tmp_path):
    server, port = start(tmp_path, **{"learning.max_delay_seconds": 0.1, "monitor.check_seconds": 0.05,
                                      "monitor.slo_freshness_seconds": 0.2})
    try:
        with CovisitClient(f"127.0.0.1:{port}", timeout=10, admin_token=TOKEN) as client:
            client.recommend_items(["a"])
            slos = {c.name: c for c in client.get_status().slos}
            assert set(slos) == {"latency_p95_ms", "freshness_seconds", "cache_hit_rate"}
            assert slos["latency_p95_ms"].ok and slos["latency_p95_ms"].target == 50
            assert not slos["cache_hit_rate"].ok  # one request, no hit yet
            client.rollback_model(client.get_status().model_version)  # pinned: events wait
            client.record_events([Event("w", "a", "view", NOW)])
            alert = wait_until(lambda: [a for a in client.get_status().alerts if a.kind == "freshness"],
                               "alerted")[0]
            assert "freshness_seconds" in alert.reason
            assert value(scrape(server.metrics_port), "covisit_alert", kind="freshness") == 1
            client.resume_learning()
            wait_until(lambda: not [a for a in client.get_status().alerts if a.kind == "freshness"], "cleared")
    finally:
        server.stop(0)


def test_an_item_shift_raises_the_drift_alert(tmp_path):
    server, port = start(tmp_path, **{"monitor.check_seconds": 0.05, "monitor.drift_window": 100,
                                      "monitor.drift_baseline": 200})
    try:
        with CovisitClient(f"127.0.0.1:{port}", timeout=10, admin_token=TOKEN) as client:
            old = [Event(f"o{n}", f"old-{n % 20}", "view", NOW) for n in range(300)]
            client.record_events(old)
            time.sleep(0.3)
            assert not [a for a in client.get_status().alerts if a.kind == "drift"]
            client.record_events([Event(f"n{n}", f"new-{n % 20}", "view", NOW) for n in range(100)])
            alert = wait_until(lambda: [a for a in client.get_status().alerts if a.kind == "drift"], "alerted")[0]
            assert "jensen-shannon 1.000" in alert.reason.lower()
            assert client.get_metrics().drift.item_divergence > 0.9  # disjoint items
    finally:
        server.stop(0)


def test_every_dashboard_query_names_an_exported_metric(tmp_path):
    # small drift windows, so that the divergence (exported once both are full) exists
    server, port = start(tmp_path, **{"learning.max_delay_seconds": 0.1, "monitor.drift_window": 10,
                                      "monitor.drift_baseline": 10})
    with CovisitClient(f"127.0.0.1:{port}", timeout=10, admin_token=TOKEN) as client:
        try:
            check_dashboard(server, client)
        finally:
            server.stop(0)


def check_dashboard(server, client):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    queries = [t["expr"] for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]
    assert queries and all(p.get("gridPos") for p in dashboard["panels"])
    # traffic that makes every labelled series exist: requests (one from the cache), a refused
    # one, impressions and a click, events (fsync, publish) and a rejected event
    for _ in range(2):
        rec = client.recommend_items(["a"], k=5)
    client.record_impressions(rec.request_id, [i.item_id for i in rec.items])
    client.record_clicks(rec.request_id, rec.items[0].item_id)
    with pytest.raises(Exception):
        client.record_events([Event("u", "a", "teleport", NOW)])
    published = client.get_metrics().publishes
    client.record_events([Event(f"d{n}", item, "view", NOW + n) for n in range(10) for item in "ab"])
    wait_until(lambda: client.get_metrics().publishes > published, "published")
    exported = {name for name, _ in scrape(server.metrics_port)}
    named = {m for q in queries for m in re.findall(r"\bcovisit_[a-z0-9_]+", q)}
    assert named and named <= exported, sorted(named - exported)


def test_the_prediction_log_feeds_covisit_report(tmp_path, capsys):
    server, port = start(tmp_path, **{"monitor.prediction_log": True})
    with CovisitClient(f"127.0.0.1:{port}", timeout=10, admin_token=TOKEN) as client:
        recs = [client.recommend_items(["a"], k=5), client.recommend_items(["b"], k=5)]
        for rec in recs:
            client.record_impressions(rec.request_id, [i.item_id for i in rec.items][:5])
        client.record_clicks(recs[0].request_id, recs[0].items[0].item_id)
        client.record_clicks(recs[0].request_id, recs[0].items[1].item_id)
    server.stop(0)  # flushes the log
    log_dir = tmp_path / "data" / "predictions"
    assert main(["report", "--log", str(log_dir), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["overall"]["impressions"] == 10 and rep["overall"]["clicks"] == 2
    assert rep["overall"]["ctr"] == pytest.approx(0.2)
    assert rep["overall"]["hit_rate"] == pytest.approx(0.5)  # one of the two responses got clicks
    assert [g["version"] for g in rep["groups"]] == [int(recs[0].model_version)]
    assert main(["report", "--log", str(log_dir)]) == 0
    table = capsys.readouterr().out.splitlines()
    overall = next(line for line in table if line.startswith("all"))
    assert overall.split()[1:6] == ["2", "10", "2", "0.2000", "0.500"]  # responses .. hit rate


def test_covisit_top_shows_the_key_figures(served, capsys, monkeypatch):
    _, client, target = served
    client.recommend_items(["a"])
    monkeypatch.setenv("COVISIT_ADMIN_TOKEN", TOKEN)
    assert main(["top", "--target", target, "--frames", "2", "--interval", "0.05"]) == 0
    out = capsys.readouterr().out
    version = client.get_status().model_version
    assert "serving version" in out and version in out
    assert "latency p50 / p95 / p99" in out and "latency_p95_ms" in out

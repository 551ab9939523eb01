"""make loadtest's parts against a real server on loopback: the Locust shoppers, the runner's
verdict, the loopback rule and the search for the highest rate."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from covisit.client import CovisitClient
from covisit.core.datasets import read_online_retail
from tests.server import serving

LOADTEST = Path(__file__).resolve().parents[2] / "loadtest"
sys.path.insert(0, str(LOADTEST))  # run_loadtest imports its sibling scripts as top-level modules
import run_loadtest  # noqa: E402

TRAINING_EVENTS = 20_000  # the first invoices of the log the shoppers replay, so ids overlap


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A real server trained on the start of the bundled log; yields (target, admin client)."""
    directory = tmp_path_factory.mktemp("loadtest")
    events = directory / "retail.csv"
    with open(events, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "event_type", "timestamp", "session_id"])
        for ev in read_online_retail(run_loadtest.ROOT / "loadtest" / "data" / "online_retail.csv.gz").events[:TRAINING_EVENTS]:
            w.writerow([ev.user_id, ev.item_id, ev.event_type, ev.timestamp, ev.session_id])
    server, port = serving.start(directory, **{"server.data": str(events)})
    client = CovisitClient(f"127.0.0.1:{port}", admin_token=serving.TOKEN)
    yield f"127.0.0.1:{port}", client
    client.close()
    server.stop(0)


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOADTEST / "run_loadtest.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=run_loadtest.ROOT)


def test_shoppers_replay_sessions_and_every_call_is_counted(target, tmp_path):
    address, client = target
    before = client.get_metrics()
    done = run("--target", address, "--users", "4", "--spawn-rate", "4", "--seconds", "6", "--processes", "1",
               "--out", str(tmp_path), "--step-rate", "5")
    assert done.returncode == 0, done.stderr[-3000:]
    verdict = json.loads(done.stdout.strip().splitlines()[-1])
    window = verdict["window_seconds"]  # from every shopper started to the time limit
    assert 4 < window < 6
    stats = run_loadtest.read_stats(tmp_path / "locust", window)
    assert verdict["failures"] == 0 and verdict["rps"] == pytest.approx(stats["Aggregated"]["rps"])
    assert (tmp_path / "locust.html").stat().st_size > 0
    steps = stats["RecommendItems"]["requests"]
    assert steps >= 40  # 4 shoppers x 5 steps/s x 5 s after the ramp, less the ends of sessions
    # Every step records its event and its impressions; clicks only when the real next item showed.
    assert stats["RecordEvents"]["requests"] == pytest.approx(steps, abs=4)
    assert stats["RecordImpressions"]["requests"] == pytest.approx(steps, abs=4)
    assert 0 < stats["RecordClicks"]["requests"] < steps
    # The server saw at least what Locust counted after its reset (the ramp's calls come on top).
    after = client.get_metrics()
    assert after.events_accepted - before.events_accepted >= stats["RecordEvents"]["requests"]
    assert after.clicks - before.clicks >= stats["RecordClicks"]["requests"]
    assert after.recommend_requests - before.recommend_requests >= steps


def test_failed_calls_fail_the_run(target, tmp_path):
    address, _ = target
    done = run("--target", address, "--users", "2", "--spawn-rate", "2", "--seconds", "3", "--processes", "1",
               "--out", str(tmp_path), "--step-rate", "5", "--k", "100000")  # above the server's max k
    assert done.returncode == 1
    assert "requests failed" in done.stderr
    failures = run_loadtest.read_stats(tmp_path / "locust", 2.0)
    assert failures["RecommendItems"]["failures"] == failures["RecommendItems"]["requests"] > 0


def test_the_verdict():
    good = {"RecommendItems": {"failures": 0, "p95_ms": 3.0}, "Aggregated": {"failures": 0, "p95_ms": 3.0}}
    assert run_loadtest.judge(good, 0, 50.0) == []
    assert run_loadtest.judge(good, 0, 2.0) == ["RecommendItems p95 3 ms is above the SLO (2 ms)"]
    assert run_loadtest.judge(good, 1, 50.0) == ["0 requests failed (locust exit code 1)"]
    failed = {**good, "Aggregated": {"failures": 7, "p95_ms": 3.0}}
    assert run_loadtest.judge(failed, 0, 50.0) == ["7 requests failed (locust exit code 0)"]
    assert run_loadtest.judge({"Aggregated": {"failures": 0}}, 0, 50.0) == ["no RecommendItems call was made"]


@pytest.mark.parametrize("host", ["192.0.2.1:50051", "example.com:50051", ""])
def test_only_loopback_is_load_tested(host, tmp_path):
    done = run("--target", host, "--out", str(tmp_path)) if host else None
    if done is not None:
        assert done.returncode == 2 and "--target" in done.stderr
    locust = subprocess.run([sys.executable, "-m", "locust", "-f", str(LOADTEST / "locustfile.py"), "--headless",
                             *(["--host", host] if host else []), "-u", "1", "-t", "2s"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert locust.returncode != 0
    assert "only loopback addresses may be load-tested" in locust.stderr


def test_the_rate_search_doubles_then_bisects():
    def capacity(limit: float, saturates_at: float = float("inf")):
        tried = []

        def trial(pace):
            tried.append(pace)
            return pace <= limit, pace >= saturates_at
        return tried, trial

    tried, trial = capacity(37)
    run_loadtest.search_max(trial)
    assert tried == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36]
    tried, trial = capacity(1000)  # never misses: stops at the limit
    run_loadtest.search_max(trial, limit=256)
    assert tried == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    tried, trial = capacity(1000, saturates_at=4)  # keeps up no more: faster would only queue
    run_loadtest.search_max(trial)
    assert tried == [1, 2, 4]
    tried, trial = capacity(0.5)  # misses at once: nothing to bisect
    run_loadtest.search_max(trial)
    assert tried == [1]

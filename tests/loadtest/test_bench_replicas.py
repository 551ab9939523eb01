"""The replicas benchmark's own logic, without servers: which replica takes each RecordEvents
call, where the probes go, and the freshness summary, on inputs whose answer is known by hand."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

import pytest

LOADTEST = Path(__file__).resolve().parents[2] / "loadtest"
sys.path.insert(0, str(LOADTEST))  # the benchmark imports its sibling scripts as top-level modules
import bench_replicas  # noqa: E402
from bench_freshness import Traffic, write_stream  # noqa: E402

MS = 1_000_000  # ns


def test_calls_alternate_and_so_do_the_probe_calls():
    assert [bench_replicas.replica_for_call(c, 10, 2) for c in range(12)] == [0, 1] * 5 + [1, 0]
    assert [bench_replicas.replica_for_call(c, 10, 2) for c in range(0, 60, 10)] == [0, 1] * 3
    assert [bench_replicas.replica_for_call(c, 10, 3) for c in range(0, 60, 10)] == [0, 1, 2] * 2
    for n in (2, 3):  # every replica takes its share of the calls
        taken = [bench_replicas.replica_for_call(c, 10, n) for c in range(30 * n)]
        assert [taken.count(r) for r in range(n)] == [30] * n


class FakeClient:
    def __init__(self):
        self.calls: list[list] = []

    def record_events(self, events):
        self.calls.append(list(events))


def test_each_probe_goes_to_every_prober_tagged_with_the_replica_that_took_it():
    clients = [FakeClient(), FakeClient()]
    writer = bench_replicas.Alternating(clients, probe_every=2)
    fan = bench_replicas.FanOut(writer, 2)
    args = argparse.Namespace(per_call=4, rate=1e6, probe_every=2)
    traffic = Traffic(stream=[(s, item, "view") for s in range(5) for item in ("a", "b")], contexts=[])
    got = write_stream(writer, traffic, "t", args, seconds=10 * 4 / 1e6, probes=fan, enough=threading.Event())
    assert got["calls"] == 10 and got["probes"] == 4  # calls 0, 2, 4, 6 carry one
    assert fan.origin == {0: 0, 1: 1, 2: 0, 3: 1}
    for index, origin in fan.origin.items():
        carried = [call for call in clients[origin].calls if any(e.item_id == f"t-q{index}" for e in call)]
        assert len(carried) == 1
    queued = [[q.get_nowait() for _ in range(q.qsize())] for q in fan.queues]
    assert [[p.index for p in probes] for probes in queued] == [[0, 1, 2, 3]] * 2
    assert all(a is not b and a.acked_ns == b.acked_ns > 0 for a, b in zip(*queued))  # a copy each


def test_freshness_summary_per_replica_pooled_split_and_every_replica():
    samples = [  # (probe, replica, took the write, delay ns or None)
        (0, 0, True, 100 * MS), (0, 1, False, 300 * MS),
        (1, 0, False, 200 * MS), (1, 1, True, 50 * MS),
        (2, 0, True, 400 * MS), (2, 1, False, None),  # replica 1 never served probe 2
    ]
    out = bench_replicas.freshness_summary(samples, replicas=2)
    r0, r1 = out["per_replica"]
    assert (r0["seen"], r0["total"], r0["p50_ms"], r0["max_ms"]) == (3, 3, 200, 400)
    assert r0["p95_ms"] == pytest.approx(380)  # linear between 200 and 400
    assert (r1["seen"], r1["total"], r1["p50_ms"], r1["max_ms"]) == (2, 3, 175, 300)
    assert (out["pooled"]["seen"], out["pooled"]["total"], out["pooled"]["p50_ms"]) == (5, 6, 200)
    took, other = out["took_the_write"], out["other_replicas"]
    assert (took["seen"], took["total"], took["p50_ms"], took["max_ms"]) == (3, 3, 100, 400)
    assert (other["seen"], other["total"], other["p50_ms"], other["max_ms"]) == (2, 3, 250, 300)
    every = out["every_replica"]  # per probe the last replica: 300, 200, and probe 2 missed
    assert (every["seen"], every["total"], every["p50_ms"], every["max_ms"]) == (2, 3, 250, 300)


def test_a_probe_missed_by_the_first_replica_asked_stays_missed_for_every_replica():
    out = bench_replicas.freshness_summary([(7, 0, True, None), (7, 1, False, 10 * MS)], replicas=2)
    assert out["every_replica"] == {"seen": 0, "total": 1, "p50_ms": None, "p95_ms": None, "max_ms": None}
    assert out["per_replica"][1]["p50_ms"] == 10


def test_the_best_run_is_the_fastest_under_the_p99_without_errors():
    runs = [{"requests_per_s": 1000, "p99_ms": 2, "errors": 0}, {"requests_per_s": 1500, "p99_ms": 9, "errors": 0},
            {"requests_per_s": 1600, "p99_ms": 9, "errors": 1}, {"requests_per_s": 1700, "p99_ms": 12, "errors": 0}]
    assert bench_replicas.best_run(runs, 10.0)["requests_per_s"] == 1500
    assert bench_replicas.best_run(runs[3:], 10.0) is None

"""Replicas sharing one JetStream stream (a real 3-node NATS cluster on loopback, R3): they seed
it once between them, learn every event whichever replica took it, and converge to the same
counts, equal to a batch build of the stream."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from covisit.client import CovisitClient, Event
from covisit.core.config import ModelConfig
from covisit.core.jetstream_log import JetStreamEventLog
from covisit.core.model import CoVisitModel
from tests.nats_cluster import NatsCluster
from tests.server.serving import NOW, start, write_events

_streams = (f"REPLICAS_{n}" for n in itertools.count())
DEADLINE = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with NatsCluster(tmp_path_factory.mktemp("nats")) as running:
        yield running


@pytest.fixture
def replicas(cluster, tmp_path):
    """Two servers on one stream of the test's own, started at the same time (so both try to
    seed it); yields [(server, port), ...] and the stream's settings."""
    shared = {"server.event_log": ",".join(cluster.urls), "server.event_log_stream": next(_streams),
              "server.event_log_replicas": 3}
    started, errors = {}, []

    def run(name: str) -> None:
        try:
            started[name] = start(tmp_path / name, **shared)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        if errors:
            raise errors[0]
        yield [started["a"], started["b"]], shared
    finally:
        for server, _ in started.values():
            server.stop(0)


def test_replicas_seed_once_and_converge_to_a_batch_build(replicas, cluster, tmp_path):
    servers, shared = replicas
    seeded = write_events(tmp_path / "count.csv")
    for i, (_, port) in enumerate(servers):
        with CovisitClient(f"127.0.0.1:{port}") as client:
            for call in range(5):
                client.record_events([Event(f"r{i}u{call}", item, "view", NOW + call, f"r{i}s{call}")
                                      for item in ("a", "c", "e", f"new{i}")])
    for server, _ in servers:
        assert server.engine.flush(timeout=DEADLINE)
    stream = shared["server.event_log_stream"]
    with JetStreamEventLog(cluster.urls, stream=stream, subject=f"covisit.{stream}", replicas=3) as log:
        assert log.durable_offset == seeded + 2 * 5 * 4  # the seed went in once
        batch = CoVisitModel(ModelConfig())
        batch.update([event for _, event in log.read(0)])
    digests = {server.engine.learner._model.digest() for server, _ in servers}
    assert digests == {batch.digest()}


def test_an_event_taken_by_one_replica_is_served_by_the_other(replicas):
    (_, port_a), (_, port_b) = replicas[0]
    with CovisitClient(f"127.0.0.1:{port_a}") as a, CovisitClient(f"127.0.0.1:{port_b}") as b:
        a.record_events([Event("u-new", "P", "view", NOW, "s-new"), Event("u-new", "Q", "view", NOW + 1, "s-new")])
        deadline = time.monotonic() + DEADLINE
        while "Q" not in [i.item_id for i in b.recommend_items(["P"], k=5).items]:
            assert time.monotonic() < deadline, "replica b never served what replica a took"
            time.sleep(0.05)

"""Replicas sharing one JetStream stream (a real 3-node NATS cluster on loopback, R3): they seed
it once between them, learn every event whichever replica took it, and converge to the same
counts, equal to a batch build of the stream."""

from __future__ import annotations

import itertools
import threading
import time

import grpc
import pytest

from covisit.client import CovisitClient, Event
from covisit.core.config import ModelConfig
from covisit.core.jetstream_log import JetStreamEventLog
from covisit.core.model import CoVisitModel
from loadtest.nats_cluster import NatsCluster
from tests.server.serving import NOW, TOKEN, free_port, launch_replica, start, wait_serving, write_events

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
            started[name] = start(tmp_path / name, **shared, **{"server.replica_name": name})
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


def test_a_nats_node_and_a_replica_killed_during_ingest_lose_nothing_acknowledged(cluster, tmp_path):
    stream = next(_streams)
    ports = {"a": free_port(), "b": free_port()}
    procs = {name: launch_replica(tmp_path / name, port, cluster.urls, stream) for name, port in ports.items()}
    acked: list[Event] = []
    try:
        for port in ports.values():
            wait_serving(f"127.0.0.1:{port}", timeout=60)
        clients = {name: CovisitClient(f"127.0.0.1:{port}", timeout=5) for name, port in ports.items()}
        stop = threading.Event()

        def writer() -> None:  # alternates replicas; keeps what was acknowledged
            deadline = time.monotonic() + 60
            for call in range(600):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                events = [Event(f"w{call}", item, "view", NOW + call, f"w{call}") for item in ("a", "b", f"i{call % 7}")]
                try:
                    clients["ab"[call % 2]].record_events(events)
                    acked.extend(events)
                except grpc.RpcError:
                    pass  # not acknowledged: the replica or the stream was down
                time.sleep(0.005)

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(1.0)
        before_kills = len(acked)
        leader = cluster.stream_leader(stream)
        leader.kill()
        procs["b"].kill()  # SIGKILL both mid-ingest
        procs["b"].wait(timeout=10)
        time.sleep(1.0)
        cluster.restart(leader)
        procs["b"] = launch_replica(tmp_path / "b", ports["b"], cluster.urls, stream)
        wait_serving(f"127.0.0.1:{ports['b']}", timeout=60)
        restarted = len(acked)
        wait_for_acks = time.monotonic() + DEADLINE
        while len(acked) < restarted + 30 and time.monotonic() < wait_for_acks:  # ingest after the restarts too
            time.sleep(0.1)
        stop.set()
        thread.join(timeout=90)
        assert not thread.is_alive()
        with JetStreamEventLog(cluster.urls, stream=stream, subject=f"covisit.{stream}", replicas=3) as log:
            end = log.durable_offset
            stored = {(e.user_id, e.item_id, e.timestamp) for _, e in log.read(0)}
        assert before_kills > 0 and len(acked) >= restarted + 30  # ingest went on around the kills
        assert [e for e in acked if (e.user_id, e.item_id, e.timestamp) not in stored] == []
        # both replicas learn the whole stream and answer alike
        admins = [CovisitClient(f"127.0.0.1:{port}", timeout=5, admin_token=TOKEN) for port in ports.values()]
        deadline = time.monotonic() + DEADLINE
        contexts = [["a"], ["b"], ["x"], *([f"i{k}"] for k in range(7))]
        statuses = []
        while True:
            assert all(proc.poll() is None for proc in procs.values()), {n: p.poll() for n, p in procs.items()}
            try:
                statuses = [admin.get_status() for admin in admins]
                answers = [[[(i.item_id, round(i.score, 5)) for i in admin.recommend_items(ctx, k=5).items]
                            for ctx in contexts] for admin in admins]
                if all(s.log_events == end and s.events_pending == 0 for s in statuses) and answers[0] == answers[1]:
                    break
            except grpc.RpcError as exc:  # gRPC's reconnect backoff to the restarted replica
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            assert time.monotonic() < deadline, f"replicas did not converge: {statuses}"
            time.sleep(0.2)
        for client in (*clients.values(), *admins):
            client.close()
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(timeout=10)

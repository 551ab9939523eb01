"""A fleet of three replica processes on one JetStream stream (a real 3-node NATS cluster on
loopback): a rollback sent to one replica is served by the others within 5 s, a resume sent to
another ends the pin everywhere, the leader's death elects another, promotions and experiments
apply everywhere, the leader rolls back on the fleet's CTR, and a new replica starts from the
object store's checkpoint."""

from __future__ import annotations

import itertools
import time

import grpc
import pytest

from covisit.client import CovisitClient, Event
from covisit.core.config import ModelConfig
from covisit.core.jetstream_log import JetStreamEventLog
from covisit.core.model import CoVisitModel
from loadtest.nats_cluster import NatsCluster
from tests.server.serving import NOW, TOKEN, free_port, launch_replica, wait_serving

_streams = (f"FLEET_{n}" for n in itertools.count())
ROLLBACK_SECONDS = 5.0  # the bound on a rollback reaching every replica
LEASE_SECONDS = 3.0  # core.fleet_store's default lease
WINDOW = 20  # impressions in a line's CTR window (learning.feedback_window), small to test quickly
SETTINGS = {"COVISIT_LEARNING_FEEDBACK_WINDOW": str(WINDOW)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with NatsCluster(tmp_path_factory.mktemp("nats")) as running:
        yield running


def wait_for(what: str, check, timeout: float, pause: float = 0.05):
    """check()'s first truthy result within `timeout` s (gRPC's reconnect backoff is retried)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(pause)


def show(clients: list[CovisitClient], requests: int, click: bool) -> None:
    """Requests answered by one replica, their impressions and clicks sent to others."""
    for i in range(requests):
        answered, shown, clicked = (clients[(i + j) % len(clients)] for j in range(3))
        response = answered.recommend_items(["a"], k=5)
        shown.record_impressions(response.request_id, [item.item_id for item in response.items])
        if click:
            clicked.record_clicks(response.request_id, response.items[0].item_id)


def answers(client: CovisitClient) -> list:
    return [[i.item_id for i in client.recommend_items(ctx, k=5).items] for ctx in (["a"], ["c"], ["x"])]


def test_a_fleet_shares_rollbacks_resumes_leadership_and_checkpoints(cluster, tmp_path):
    stream = next(_streams)
    names = ("a", "b", "c")
    ports = {name: free_port() for name in names}
    procs = {name: launch_replica(tmp_path / name, ports[name], cluster.urls, stream, name, SETTINGS)
             for name in names}
    clients: dict[str, CovisitClient] = {}
    try:
        for name in names:
            wait_serving(f"127.0.0.1:{ports[name]}", timeout=60)
            clients[name] = CovisitClient(f"127.0.0.1:{ports[name]}", timeout=10, admin_token=TOKEN)
        leader = wait_for("one leader all agree on", lambda: (
            {s.leader for s in (clients[n].get_status() for n in names)} & set(names)), 30).pop()
        assert [clients[n].get_status().replica for n in names] == list(names)
        lines = wait_for("every replica on the leader's line", lambda: (
            len(found := {clients[n].get_status().model_line for n in names}) == 1 and found), 30)
        assert lines == {clients[leader].get_status().model_line}

        # a version replica a made (incremental, so in a's memory only) serves everywhere, pinned
        for call in range(2):
            before = clients["a"].get_status().model_version
            clients["a"].record_events([Event(f"f{call}", item, "view", NOW + call, f"f{call}")
                                        for item in ("a", "x", f"n{call}")])
            wait_for("replica a publishing", lambda: (s := clients["a"].get_status()).events_pending == 0
                     and s.model_version != before, 30)
        serving = clients["a"].get_status().model_version
        target = next(v.version for v in clients["a"].list_model_versions() if v.version != serving)
        rolled = time.monotonic()
        clients["a"].rollback_model(target)
        for name in ("b", "c"):
            wait_for(f"replica {name} serving the rollback target", lambda n=name: (
                (s := clients[n].get_status()).model_version == target and s.pinned_version == target),
                ROLLBACK_SECONDS - (time.monotonic() - rolled))
        assert answers(clients["b"]) == answers(clients["c"]) == answers(clients["a"])

        # a resume sent to another replica ends the pin on all
        clients["c"].resume_learning(timeout=60)
        for name in names:
            wait_for(f"replica {name} learning again", lambda n=name: clients[n].get_status().pinned_version == "",
                     30)

        # only the leader builds; when it dies another replica leads
        follower = next(n for n in names if n != leader)
        with pytest.raises(grpc.RpcError) as refused:
            clients[follower].rebuild_model()
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert leader in refused.value.details()
        procs[leader].kill()
        procs[leader].wait(timeout=10)
        killed = time.monotonic()
        survivors = [n for n in names if n != leader]
        new_leader = wait_for("a new leader", lambda: (
            {clients[n].get_status().leader for n in survivors} & set(survivors)), 3 * LEASE_SECONDS).pop()
        print(f"new leader {new_leader} after {time.monotonic() - killed:.1f} s")
        candidate = clients[new_leader].rebuild_model().model_version  # waits for the gate
        before = clients[new_leader].get_status().model_line

        # experiments started on one replica run on all
        clients[new_leader].start_ab_test(candidate, fraction=0.25)
        other = next(n for n in survivors if n != new_leader)
        wait_for("the A/B test on the other replica", lambda: (ab := clients[other].get_status().ab_test)
                 is not None and (ab.version, ab.fraction) == (candidate, 0.25), 10)
        clients[other].stop_ab_test()
        wait_for("the A/B test stopped everywhere", lambda: clients[new_leader].get_status().ab_test is None, 10)
        survivor_clients = [clients[n] for n in survivors]
        wait_for("both survivors on the new leader's line", lambda: all(
            c.get_status().model_line == before for c in survivor_clients), 30)
        show(survivor_clients, 2 * WINDOW // 5, click=True)  # the line before the promotion: CTR 0.2

        # a promotion sent to a replica that does not lead: the leader promotes, all follow
        clients[other].promote_model(candidate)
        for name in survivors:
            wait_for(f"replica {name} on the promoted line", lambda n=name: clients[n].get_status().model_line
                     == candidate, 30)

        # no clicks on the promoted line, whose feedback reaches the leader from both replicas:
        # it rolls the fleet back to the line before
        show(survivor_clients, 2 * WINDOW // 5, click=False)
        for name in survivors:
            wait_for(f"replica {name} rolled back", lambda n=name: clients[n].get_status().pinned_version == before, 10)
        status = clients[new_leader].get_status()
        assert [a.kind for a in status.alerts] == ["auto_rollback"]
        # both replicas' clicks (each published its own half); impressions also count the
        # requests answered after the rollback, by the line rolled back to
        impressions, clicks = {f.version: (f.impressions, f.clicks) for f in clients[other].get_status().feedback}[before]
        assert clicks == 2 * WINDOW // 5 and impressions >= 2 * WINDOW
        clients[other].resume_learning(timeout=60)

        # a new replica starts from the checkpoint of the fleet's line, then replays the tail
        port_d = free_port()
        procs["d"] = launch_replica(tmp_path / "d", port_d, cluster.urls, stream, "d")
        started = time.monotonic()
        wait_serving(f"127.0.0.1:{port_d}", timeout=30)
        print(f"replica d serving after {time.monotonic() - started:.1f} s")
        fetched = list((tmp_path / "d" / "data" / "checkpoints").glob("v*"))
        assert fetched, "replica d did not fetch a checkpoint from the object store"
        with JetStreamEventLog(cluster.urls, stream=stream, subject=f"covisit.{stream}", replicas=3) as log:
            batch = CoVisitModel(ModelConfig())
            batch.update([event for _, event in log.read(0)])
        with CovisitClient(f"127.0.0.1:{port_d}", timeout=10, admin_token=TOKEN) as d:
            digests = {c.get_status(counts_digest=True).counts_digest for c in [*survivor_clients, d]}
            assert digests == {batch.digest()}
    finally:
        for client in clients.values():
            client.close()
        for proc in procs.values():
            proc.kill()
            proc.wait(timeout=10)

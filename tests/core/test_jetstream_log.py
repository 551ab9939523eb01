"""Tests for the JetStream event log against a real 3-node NATS cluster on loopback, every
stream with 3 replicas: round trips, offsets, purges, concurrent appends, a second replica's
view, and a node SIGKILLed under appends."""

import itertools
import threading
import time

import pytest

from covisit.core import jetstream_log
from covisit.core.eventlog import EventLog, EventLogError, OffsetMismatch, OffsetOutOfRange
from covisit.core.events import Event
from covisit.core.jetstream_log import JetStreamEventLog
from tests.core.eventlog_contract import (
    check_expect_offset_guards_appends,
    check_offsets_and_reads_from_the_middle,
    check_racing_seeders_append_each_batch_once,
    check_round_trip_keeps_every_field,
    ev,
    run_in_threads,
)
from loadtest.nats_cluster import NatsCluster

_stream_names = (f"TEST_{n}" for n in itertools.count())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with NatsCluster(tmp_path_factory.mktemp("nats")) as running:
        yield running


@pytest.fixture
def open_log(cluster):
    """Opens logs on a stream of the test's own (R3 unless told); closes them after the test."""
    opened = []
    stream = next(_stream_names)

    def make(**options) -> JetStreamEventLog:
        options = {"stream": stream, "subject": f"events.{stream}", "replicas": 3, **options}
        opened.append(JetStreamEventLog(options.pop("servers", cluster.urls), **options))
        return opened[-1]

    yield make
    for log in opened:
        log.close()


def test_jetstream_log_has_the_event_log_interface(open_log, cluster):
    log = open_log()
    assert isinstance(log, EventLog)
    info = cluster.stream_info(log.stream)
    assert info.config.num_replicas == 3
    assert len(info.cluster.replicas) == 2  # the leader and two followers


def test_round_trip_keeps_every_field(open_log):
    check_round_trip_keeps_every_field(open_log())


def test_offsets_and_reads_from_the_middle(open_log):
    log = open_log()
    assert log.start_offset == 0
    check_offsets_and_reads_from_the_middle(log)
    assert log.start_offset == 0


def test_reads_page_through_many_direct_gets(open_log, monkeypatch):
    monkeypatch.setattr(jetstream_log, "_DIRECT_BATCH", 64)  # 1000 events: 16 requests a read
    log = open_log()
    log.append([ev(k) for k in range(1000)])
    assert log.read(0) == [(k, ev(k)) for k in range(1000)]
    pages, offset = [], 0
    while page := log.read(offset, 300):
        pages.append(page)
        offset = page[-1][0] + 1
    assert [len(p) for p in pages] == [300, 300, 300, 100]
    assert [e for p in pages for e in p] == [(k, ev(k)) for k in range(1000)]


def test_a_read_asks_again_when_a_replica_behind_the_leader_answers(open_log, monkeypatch):
    log = open_log()
    log.append([ev(k) for k in range(10)])
    direct_get = JetStreamEventLog._direct_get
    answers = []

    async def behind_at_first(self, first_sequence, count):
        got = await direct_get(self, first_sequence, count)
        answers.append(first_sequence)
        # first a replica 7 events behind, then one with nothing newer, then a current one
        return {1: got[:3], 2: []}.get(len(answers), got)

    monkeypatch.setattr(JetStreamEventLog, "_direct_get", behind_at_first)
    assert log.read(0) == [(k, ev(k)) for k in range(10)]
    assert answers == [1, 4, 4]


def lose_acks(monkeypatch, n: int) -> list:
    """Drop the next `n` PubAcks, as a connection dropped under them would; the dropped list."""
    monkeypatch.setattr(jetstream_log, "_REPLY_WAIT", 0.2)
    dropped = []
    on_ack = JetStreamEventLog._on_ack

    async def lose_the_first_n(self, msg):
        if len(dropped) < n:
            dropped.append(msg)
        else:
            await on_ack(self, msg)

    monkeypatch.setattr(JetStreamEventLog, "_on_ack", lose_the_first_n)
    return dropped


def test_lost_acks_are_retried_without_storing_an_event_twice(open_log, monkeypatch):
    dropped = lose_acks(monkeypatch, 3)
    log = open_log()
    assert log.append([ev(k) for k in range(5)]) == 5
    assert len(dropped) == 3
    assert log.durable_offset == 5  # the resent three were recognised by their message ids
    assert log.read(0) == [(k, ev(k)) for k in range(5)]
    assert log.append([ev(5)]) == 6


def test_expect_offset_guards_appends(open_log):
    check_expect_offset_guards_appends(open_log())


def test_a_failed_guard_sends_nothing_after_the_first_event(open_log, monkeypatch):
    log = open_log()
    log.append([ev(0)])
    sent = []
    publish = JetStreamEventLog._publish

    async def counting(self, records, headers, deadline):
        sent.extend(headers)
        return await publish(self, records, headers, deadline)

    monkeypatch.setattr(JetStreamEventLog, "_publish", counting)
    with pytest.raises(OffsetMismatch, match="end at offset 0, but it ends at 1"):
        log.append([ev(k) for k in range(10)], expect_offset=0)
    assert [h.get(jetstream_log.EXPECTED_LAST_SEQUENCE) for h in sent] == ["0"]
    assert log.durable_offset == 1
    assert log.read(0) == [(0, ev(0))]


def test_a_resent_guarded_first_event_is_no_false_mismatch(open_log, monkeypatch):
    """The first event was stored but its ack lost: the resend's duplicate ack is success."""
    dropped = lose_acks(monkeypatch, 2)
    log = open_log()
    assert log.append([ev(k) for k in range(5)], expect_offset=0) == 5
    assert len(dropped) == 2  # the first event's ack, then its resend's
    assert log.durable_offset == 5
    assert log.read(0) == [(k, ev(k)) for k in range(5)]
    assert log.append([ev(5)], expect_offset=5) == 6


def test_racing_seeding_replicas_append_each_batch_once(open_log, cluster):
    first = open_log()
    # four replicas of the service, each on its own connection, through different nodes
    logs = [first] + [open_log(servers=cluster.urls[t % 3:] + cluster.urls[:t % 3])
                      for t in range(1, 4)]
    check_racing_seeders_append_each_batch_once(logs)


def test_reopen_and_continue_appending(open_log):
    log = open_log()
    log.append([ev(k) for k in range(10)])
    log.close()
    log = open_log()
    assert log.durable_offset == 10
    assert log.append([ev(10), ev(11)]) == 12
    log.close()
    assert open_log().read(0) == [(k, ev(k)) for k in range(12)]


def test_a_bad_event_publishes_nothing(open_log):
    log = open_log()
    log.append([ev(0)])
    with pytest.raises(ValueError, match="UTF-8 strings"):
        log.append([ev(1), Event("u", 42, "view", 1.0)])
    assert log.durable_offset == 1
    assert log.append([ev(1)]) == 2
    assert log.read(0) == [(0, ev(0)), (1, ev(1))]


def test_nothing_after_close(open_log):
    log = open_log()
    log.close()
    log.close()  # twice is fine
    with pytest.raises(EventLogError, match="closed"):
        log.append([ev(0)])
    with pytest.raises(EventLogError, match="closed"):
        log.read(0)


def test_a_stream_that_does_not_capture_the_subject_is_refused(open_log):
    log = open_log()
    with pytest.raises(EventLogError, match="does not capture"):
        JetStreamEventLog(log.servers, stream=log.stream, subject="elsewhere.events", timeout=5)


def test_an_unreachable_cluster_fails_within_the_timeout():
    from tests.server.serving import free_port  # nothing listens there
    started = time.monotonic()
    with pytest.raises(EventLogError, match="cannot open"):
        JetStreamEventLog(f"nats://127.0.0.1:{free_port()}", timeout=1)
    assert time.monotonic() - started < 10


def test_delete_before_is_a_no_op_unless_purging_is_allowed(open_log):
    log = open_log()
    log.append([ev(k) for k in range(20)])
    assert log.delete_before(15) == 0  # another replica may still need them
    assert log.start_offset == 0
    assert log.read(0) == [(k, ev(k)) for k in range(20)]


def test_delete_before_purges_and_keeps_offsets_when_allowed(open_log):
    log = open_log(allow_purge=True)
    log.append([ev(k) for k in range(20)])
    assert log.delete_before(9) == 9
    assert log.delete_before(5) == 0  # already gone
    assert log.start_offset == 9
    assert log.durable_offset == 20
    assert log.read(9, 2) == [(9, ev(9)), (10, ev(10))]
    with pytest.raises(OffsetOutOfRange, match="before offset 9"):
        log.read(8)
    assert log.delete_before(10**9) == 11  # up to the end, never past it
    assert log.start_offset == log.durable_offset == 20
    assert log.read(20) == []
    assert log.append([ev(20)]) == 21
    assert log.read(20) == [(20, ev(20))]


def test_concurrent_appends_keep_each_batch_whole_and_in_order(open_log):
    log = open_log()
    threads_n, appends_n, batch = 4, 15, 5
    ends: dict[int, list[int]] = {t: [] for t in range(threads_n)}

    def worker(t):
        for a in range(appends_n):
            ends[t].append(log.append([Event(f"t{t}", f"{a}-{b}", "view", float(a))
                                       for b in range(batch)]))

    assert run_in_threads(worker, threads_n) == []
    got = log.read(0)
    assert [o for o, _ in got] == list(range(threads_n * appends_n * batch))
    for t, thread_ends in ends.items():
        for a, end in enumerate(thread_ends):  # each batch at the offsets its append returned
            assert [(e.user_id, e.item_id) for _, e in got[end - batch:end]] == \
                [(f"t{t}", f"{a}-{b}") for b in range(batch)]


def test_a_second_replica_reads_the_same_events_in_the_same_order(open_log, cluster):
    first = open_log()
    # another replica of the service: its own connection, through another node first
    second = open_log(servers=cluster.urls[::-1])
    for k in range(0, 60, 3):
        (first if k % 2 else second).append([ev(k), ev(k + 1), ev(k + 2)])
    assert first.durable_offset == second.durable_offset == 60
    assert first.read(0) == second.read(0)
    assert [e for _, e in first.read(0)] == [ev(k) for k in range(60)]
    assert second.read(30, 5) == first.read(30, 5)


def test_sigkill_of_the_stream_leader_loses_no_acknowledged_event(open_log, cluster):
    """Kill the node leading the stream, and serving the appending log's connection, while a
    thread appends; every acknowledged batch is in the log afterwards, once, in the order
    acknowledged, and the log goes on after the node comes back on its own store."""
    first = open_log()
    first.append([ev(0)])
    leader = cluster.stream_leader(first.stream)
    # given only the leader, the client learns the other nodes from it and reconnects to them
    log = open_log(servers=[leader.url], timeout=20)
    acked: list[tuple[int, list[Event]]] = []  # (returned end, batch) per acknowledged append
    failed = []
    stop = threading.Event()
    batch = 10

    def appender():
        deadline = time.monotonic() + 120
        for a in range(20_000):  # bounded in count and time; the test stops it sooner
            if stop.wait(0.002) or time.monotonic() > deadline:  # paced, to outlast the restart
                return
            events = [Event("killer", f"{a}-{b}", "view", float(a)) for b in range(batch)]
            try:
                acked.append((log.append(events), events))
            except EventLogError as exc:
                failed.append(repr(exc))

    def wait_acks(n, seconds=30):
        deadline = time.monotonic() + seconds
        target = len(acked) + n
        while len(acked) < target and time.monotonic() < deadline and writer.is_alive():
            time.sleep(0.01)
        assert len(acked) >= target, (len(acked), failed)

    writer = threading.Thread(target=appender)
    writer.start()
    try:
        wait_acks(20)
        assert cluster.stream_leader(log.stream) is leader
        leader.kill()
        wait_acks(20)  # a new leader took over
        assert cluster.stream_leader(log.stream) is not leader
        cluster.restart(leader)
        wait_acks(20)
    finally:
        stop.set()
        writer.join(60)
    assert not writer.is_alive()

    got = log.read(0)
    assert [o for o, _ in got] == list(range(len(got)))  # no gaps
    assert log.durable_offset == len(got)
    position = {e: o for o, e in got}
    assert len(position) == len(got)  # no event twice
    for end, events in acked:
        assert [position[e] for e in events] == list(range(end - batch, end))
    # failed appends may or may not have landed; acknowledged ones are all there, in order
    assert len(got) - 1 >= len(acked) * batch

    deadline = time.monotonic() + 30  # the restarted node catches up from its own store
    while time.monotonic() < deadline:
        replicas = cluster.stream_info(log.stream).cluster.replicas
        if len(replicas) == 2 and all(r.current for r in replicas):
            break
        time.sleep(0.1)
    assert all(r.current for r in replicas), replicas
    end = log.append([ev(1)])
    other = open_log(servers=[leader.url])  # a replica connected to the restarted node
    assert other.read(0) == log.read(0)
    assert other.read(end - 1) == [(end - 1, ev(1))]

"""What every `EventLog` implementation promises, as checks each implementation's tests run
on a fresh, empty log of their kind."""

import threading
import time
from bisect import bisect_left
from itertools import accumulate

import pytest

from covisit.core.eventlog import OffsetMismatch
from covisit.core.events import Event


def ev(k: int) -> Event:
    """The event the tests put at offset k: ids and session vary with k."""
    return Event(f"u{k % 7}", f"item-{k}", "view", 1000.0 + k, None if k % 2 else f"s{k % 3}")


def check_round_trip_keeps_every_field(log) -> None:
    events = [
        Event("u1", "i1", "view", 1.5),
        Event("ユーザー", "商品-42", "click", 1700000000.123456, "séance-☃"),
        Event("u\U0001F600", "i\u00e9", "purchase", 0.0, None),
        Event("u2", "i2", "add_to_cart", 2.0, ""),  # an empty session stays empty, not None
        Event("x" * 256, "y" * 256, "view", 3.0, "z" * 256),
    ]
    assert log.append(events) == len(events)
    got = log.read(0)
    assert got == list(enumerate(events))
    assert [type(e.session_id) for _, e in got] == [type(e.session_id) for e in events]


def check_offsets_and_reads_from_the_middle(log) -> None:
    assert log.durable_offset == 0
    assert log.read(0) == []
    assert log.append([ev(0), ev(1), ev(2)]) == 3
    assert log.append([ev(3)]) == 4
    assert log.append([]) == 4
    assert log.append([ev(k) for k in range(4, 1000)]) == 1000
    assert log.durable_offset == 1000
    assert log.read(2, 3) == [(2, ev(2)), (3, ev(3)), (4, ev(4))]
    # past the local log's sparse index's first stride, and across several strides
    assert log.read(700, 2) == [(700, ev(700)), (701, ev(701))]
    assert log.read(255, 600) == [(k, ev(k)) for k in range(255, 855)]
    assert log.read(998) == [(998, ev(998)), (999, ev(999))]
    assert log.read(1000) == []
    assert log.read(5000) == []
    assert log.read(10, 0) == []
    with pytest.raises(ValueError, match="from_offset"):
        log.read(-1)
    with pytest.raises(ValueError, match="max_events"):
        log.read(0, -1)


def run_in_threads(work, threads_n: int, timeout: float = 120) -> list[str]:
    """Run work(t) for t in range(threads_n), one thread each, at once; the errors raised."""
    errors = []

    def guarded(t):
        try:
            work(t)
        except Exception as exc:  # pragma: no cover - the callers assert there are none
            errors.append(repr(exc))

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
    return errors


def check_expect_offset_guards_appends(log) -> None:
    """An append with expect_offset = the end goes in; any other appends nothing."""
    assert log.append([ev(0), ev(1)], expect_offset=0) == 2
    assert log.append([ev(2)], expect_offset=2) == 3
    assert log.append([], expect_offset=3) == 3
    for stale in (0, 2, 4, 10):  # 0: a guard at the very start (JetStream's header "0")
        with pytest.raises(OffsetMismatch, match=f"end at offset {stale}, but it ends at 3"):
            log.append([ev(90), ev(91)], expect_offset=stale)
        with pytest.raises(OffsetMismatch, match=f"end at offset {stale}, but it ends at 3"):
            log.append([], expect_offset=stale)
    with pytest.raises(ValueError, match="expect_offset"):
        log.append([ev(90)], expect_offset=-1)
    assert log.durable_offset == 3
    assert log.read(0) == [(k, ev(k)) for k in range(3)]
    assert log.read(3) == []
    assert log.append([ev(3), ev(4)], expect_offset=3) == 5
    assert log.append([ev(5)]) == 6  # unguarded appends go on as before
    assert log.read(0) == [(k, ev(k)) for k in range(6)]


def seed(log, batches: list[list[Event]], seconds: float = 60) -> list[int]:
    """Append `batches` as a seeding replica would: each at the offset it must start at,
    guarded, re-reading the end after an OffsetMismatch; the indexes of the batches this
    call appended."""
    starts = [0, *accumulate(len(b) for b in batches)]
    total = starts.pop()
    mine = []
    deadline = time.monotonic() + seconds
    for _ in range(100_000):
        if time.monotonic() > deadline:
            break
        end = log.durable_offset
        if end >= total:
            return mine
        k = bisect_left(starts, end)  # the first batch starting at or after the end
        if k == len(batches):  # inside the last batch: its appender finishes it
            time.sleep(0.001)
            continue
        time.sleep(0)  # let the other seeders run between the read and the append
        try:
            log.append(batches[k], expect_offset=starts[k])
        except OffsetMismatch:
            continue
        mine.append(k)
    raise AssertionError(f"seeding did not finish: {log.durable_offset} of {total} events")


def check_racing_seeders_append_each_batch_once(logs: list, batches_n: int = 30) -> None:
    """`logs` (one per seeding thread, possibly the same log) race to seed one empty log with
    the same batches: each batch lands exactly once, whole and in order."""
    batches, k = [], 0
    for b in range(batches_n):
        size = 1 + b % 5
        batches.append([ev(k + i) for i in range(size)])
        k += size
    barrier = threading.Barrier(len(logs))
    appended: list[list[int]] = [[] for _ in logs]

    def seeder(t):
        barrier.wait(30)
        appended[t] = seed(logs[t], batches)

    assert run_in_threads(seeder, len(logs)) == []
    assert sorted(b for mine in appended for b in mine) == list(range(batches_n))
    assert logs[0].durable_offset == k
    assert logs[0].read(0) == [(i, ev(i)) for i in range(k)]

"""Tests for the durable event log: round trips, segments, torn tails, group commit, kill -9."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from covisit.core import eventlog
from covisit.core.eventlog import (
    CorruptLogError,
    EventLog,
    EventLogError,
    LocalEventLog,
    MemoryEventLog,
    OffsetMismatch,
    OffsetOutOfRange,
)
from covisit.core.events import Event
from tests.core.eventlog_contract import (
    check_expect_offset_guards_appends,
    check_offsets_and_reads_from_the_middle,
    check_racing_seeders_append_each_batch_once,
    check_round_trip_keeps_every_field,
    ev,
    run_in_threads,
)

FIRST_SEGMENT = f"{0:020d}.seg"


def segment_names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".seg")


def test_local_log_has_the_event_log_interface(tmp_path):
    with LocalEventLog(tmp_path) as log:
        assert isinstance(log, EventLog)  # has every member; the behaviour is pinned below


def test_round_trip_keeps_every_field(tmp_path):
    with LocalEventLog(tmp_path) as log:
        check_round_trip_keeps_every_field(log)


def test_offsets_and_reads_from_the_middle(tmp_path):
    with LocalEventLog(tmp_path) as log:
        check_offsets_and_reads_from_the_middle(log)


def test_memory_log_keeps_the_contract():
    assert isinstance(MemoryEventLog(), EventLog)
    check_round_trip_keeps_every_field(MemoryEventLog())
    check_offsets_and_reads_from_the_middle(MemoryEventLog())


def test_expect_offset_guards_appends(tmp_path):
    check_expect_offset_guards_appends(MemoryEventLog())
    with LocalEventLog(tmp_path) as log:
        check_expect_offset_guards_appends(log)
    with LocalEventLog(tmp_path) as log:  # the guard holds across a reopen
        with pytest.raises(OffsetMismatch, match="ends at 6"):
            log.append([ev(6)], expect_offset=5)
        assert log.append([ev(6)], expect_offset=6) == 7


def test_expect_offset_counts_appends_not_yet_synced(tmp_path):
    log = LocalEventLog(tmp_path, fsync="interval", interval_ms=60_000)
    assert log.append([ev(0), ev(1)]) == 2
    assert log.durable_offset == 0  # the next append still starts at 2
    with pytest.raises(OffsetMismatch, match="end at offset 0, but it ends at 2"):
        log.append([ev(9)], expect_offset=0)
    assert log.append([ev(2)], expect_offset=2) == 3
    log.close()
    with LocalEventLog(tmp_path) as log:
        assert log.read(0) == [(k, ev(k)) for k in range(3)]


def test_racing_seeders_append_each_batch_once_in_memory():
    log = MemoryEventLog()
    check_racing_seeders_append_each_batch_once([log] * 4)


def test_racing_seeders_append_each_batch_once_under_group_commit(tmp_path, monkeypatch):
    real = eventlog._fdatasync

    def slow_fdatasync(fd):  # appends pile up behind each fsync, ahead of durable_offset
        time.sleep(0.002)
        real(fd)

    monkeypatch.setattr(eventlog, "_fdatasync", slow_fdatasync)
    with LocalEventLog(tmp_path, segment_bytes=512) as log:  # rolls segments mid-race too
        check_racing_seeders_append_each_batch_once([log] * 4)
        assert len(segment_names(tmp_path)) > 1


def test_reopen_and_continue_appending(tmp_path):
    with LocalEventLog(tmp_path) as log:
        log.append([ev(k) for k in range(10)])
    with LocalEventLog(tmp_path) as log:
        assert log.recovered == {}
        assert log.durable_offset == 10
        assert log.append([ev(10), ev(11)]) == 12
    with LocalEventLog(tmp_path) as log:
        assert log.read(0) == [(k, ev(k)) for k in range(12)]


def test_a_bad_event_writes_nothing(tmp_path):
    with LocalEventLog(tmp_path) as log:
        log.append([ev(0)])
        size = (tmp_path / FIRST_SEGMENT).stat().st_size
        with pytest.raises(ValueError, match="UTF-8 strings"):
            log.append([ev(1), Event("u", 42, "view", 1.0)])
        assert (tmp_path / FIRST_SEGMENT).stat().st_size == size
        assert log.append([ev(1)]) == 2
        assert log.read(0) == [(0, ev(0)), (1, ev(1))]


def test_one_process_at_a_time_and_no_append_after_close(tmp_path):
    log = LocalEventLog(tmp_path)
    with pytest.raises(EventLogError, match="already open"):
        LocalEventLog(tmp_path)
    log.close()
    log.close()  # twice is fine
    with pytest.raises(EventLogError, match="closed"):
        log.append([ev(0)])
    LocalEventLog(tmp_path).close()


def test_segments_roll_and_reads_cross_them(tmp_path):
    # segment_bytes=1: every non-empty segment is full, so each batch starts a new one
    with LocalEventLog(tmp_path, segment_bytes=1) as log:
        for start in range(0, 20, 5):
            log.append([ev(k) for k in range(start, start + 5)])
        assert segment_names(tmp_path) == [f"{b:020d}.seg" for b in (0, 5, 10, 15)]
        assert log.read(3, 9) == [(k, ev(k)) for k in range(3, 12)]
        assert log.read(0) == [(k, ev(k)) for k in range(20)]
    with LocalEventLog(tmp_path, segment_bytes=1) as log:
        assert log.read(7) == [(k, ev(k)) for k in range(7, 20)]
        assert log.append([ev(20)]) == 21
        assert segment_names(tmp_path)[-1] == f"{20:020d}.seg"


def test_segments_stay_near_segment_bytes(tmp_path):
    record = len(eventlog.encode_event(ev(0)))
    with LocalEventLog(tmp_path, segment_bytes=10 * record) as log:
        for k in range(95):
            log.append([ev(k)])
        assert log.read(0) == [(k, ev(k)) for k in range(95)]
    names = segment_names(tmp_path)
    assert len(names) >= 9
    for name in names:
        assert (tmp_path / name).stat().st_size <= 10 * record + record  # ids vary in length


def test_delete_before_removes_only_fully_covered_segments(tmp_path):
    with LocalEventLog(tmp_path, segment_bytes=1) as log:
        for start in range(0, 20, 5):
            log.append([ev(k) for k in range(start, start + 5)])
        assert log.delete_before(9) == 1  # 0..4 only: segment 5 still holds 9
        assert log.delete_before(12) == 1  # 5..9; segment 10 still holds 12..14
        assert segment_names(tmp_path) == [f"{b:020d}.seg" for b in (10, 15)]
        assert log.start_offset == 10
        assert log.read(10, 2) == [(10, ev(10)), (11, ev(11))]
        with pytest.raises(OffsetOutOfRange, match="before offset 10"):
            log.read(9)
        assert log.delete_before(10**9) == 1  # never the active segment
        assert segment_names(tmp_path) == [f"{15:020d}.seg"]
    with LocalEventLog(tmp_path, segment_bytes=1) as log:
        assert log.start_offset == 15
        assert log.read(15) == [(k, ev(k)) for k in range(15, 20)]
        assert log.append([ev(20)]) == 21


def _four_records(tmp_path) -> list[int]:
    """Append ev(0..3) one at a time; the segment's size after each."""
    sizes = []
    with LocalEventLog(tmp_path) as log:
        for k in range(4):
            log.append([ev(k)])
            sizes.append((tmp_path / FIRST_SEGMENT).stat().st_size)
    return sizes


def _truncate(path, size):
    os.truncate(path, size)


def _flip(path, pos):
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x40
    path.write_bytes(bytes(data))


# (name, how to damage the segment given the sizes after each record, records kept, reason)
TORN = [
    ("inside header", lambda p, s: _truncate(p, s[2] + 3), 3, "partial header"),
    ("whole header, no payload", lambda p, s: _truncate(p, s[2] + 8), 3, "partial payload"),
    ("inside payload", lambda p, s: _truncate(p, s[2] + 12), 3, "partial payload"),
    ("one byte short", lambda p, s: _truncate(p, s[3] - 1), 3, "partial payload"),
    ("payload byte flipped", lambda p, s: _flip(p, s[3] - 2), 3, "CRC mismatch"),
    ("length flipped", lambda p, s: _flip(p, s[2]), 3, ""),
    ("earlier record flipped", lambda p, s: _flip(p, s[0] + 12), 1, "CRC mismatch"),
    ("zero-filled tail", lambda p, s: p.write_bytes(p.read_bytes() + bytes(64)), 4,
     "impossible payload length 0"),
]


@pytest.mark.parametrize("damage, kept, reason", [t[1:] for t in TORN], ids=[t[0] for t in TORN])
def test_a_torn_tail_is_cut_off_and_reported(tmp_path, caplog, damage, kept, reason):
    sizes = _four_records(tmp_path)
    path = tmp_path / FIRST_SEGMENT
    damage(path, sizes)
    damaged_size = path.stat().st_size
    valid = sizes[kept - 1]
    with caplog.at_level(logging.WARNING, logger="covisit.core.eventlog"):
        log = LocalEventLog(tmp_path)
    with log:
        assert log.recovered["segment"] == FIRST_SEGMENT
        assert log.recovered["truncated_bytes"] == damaged_size - valid
        assert log.recovered["valid_bytes"] == valid
        assert reason in log.recovered["reason"]
        assert "torn tail" in caplog.text
        assert path.stat().st_size == valid
        assert log.durable_offset == kept
        assert log.read(0) == [(k, ev(k)) for k in range(kept)]
        assert log.append([ev(kept)]) == kept + 1
    with LocalEventLog(tmp_path) as log:
        assert log.recovered == {}
        assert log.read(0) == [(k, ev(k)) for k in range(kept + 1)]


def test_a_torn_tail_in_the_last_of_several_segments(tmp_path):
    with LocalEventLog(tmp_path, segment_bytes=1) as log:
        for start in range(0, 15, 5):
            log.append([ev(k) for k in range(start, start + 5)])
    last = tmp_path / f"{10:020d}.seg"
    _truncate(last, last.stat().st_size - 1)
    with LocalEventLog(tmp_path, segment_bytes=1) as log:
        assert log.recovered["segment"] == last.name
        assert log.read(0) == [(k, ev(k)) for k in range(14)]


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_damage_in_an_older_segment_is_an_error(tmp_path, damage):
    with LocalEventLog(tmp_path, segment_bytes=1) as log:
        for start in range(0, 15, 5):
            log.append([ev(k) for k in range(start, start + 5)])
    older = tmp_path / f"{5:020d}.seg"
    size = older.stat().st_size
    if damage == "flip":
        _flip(older, size // 2)
    elif damage == "truncate":
        _truncate(older, size - 3)
    else:
        older.unlink()  # a gap: segment 10 does not follow segment 0
    for _ in range(2):  # a failed open leaves no lock behind
        with pytest.raises(CorruptLogError, match="not a torn write|expected the segment"):
            LocalEventLog(tmp_path, segment_bytes=1)
    assert older.exists() is (damage != "missing")
    if damage != "missing":
        assert older.stat().st_size == (size if damage == "flip" else size - 3)  # untouched


def test_always_syncs_before_append_returns(tmp_path):
    with LocalEventLog(tmp_path) as log:
        for k in range(5):
            before = log.fsyncs
            assert log.append([ev(k)]) == k + 1
            assert log.fsyncs == before + 1
            assert log.durable_offset == k + 1


def test_group_commit_shares_fsyncs_between_threads(tmp_path, monkeypatch):
    real = eventlog._fdatasync

    def slow_fdatasync(fd):  # a disk slow enough that appends pile up behind each fsync
        time.sleep(0.005)
        real(fd)

    monkeypatch.setattr(eventlog, "_fdatasync", slow_fdatasync)
    threads_n, appends_n, batch = 8, 20, 5
    log = LocalEventLog(tmp_path)
    start_fsyncs = log.fsyncs
    barrier = threading.Barrier(threads_n)
    errors = []

    def worker(t):
        barrier.wait()
        for a in range(appends_n):
            end = log.append([Event(f"t{t}", f"{a}-{b}", "view", float(a), None)
                              for b in range(batch)])
            if log.durable_offset < end:
                errors.append(f"append returned {end} before durable {log.durable_offset}")

    errors += run_in_threads(worker, threads_n)
    assert errors == []
    got = log.read(0)
    log.close()
    assert [o for o, _ in got] == list(range(threads_n * appends_n * batch))
    keys = [(e.user_id, e.item_id) for _, e in got]
    assert sorted(keys) == sorted((f"t{t}", f"{a}-{b}") for t in range(threads_n)
                                  for a in range(appends_n) for b in range(batch))
    for t in range(threads_n):  # each thread's events in the order it appended them
        mine = [item for user, item in keys if user == f"t{t}"]
        assert mine == [f"{a}-{b}" for a in range(appends_n) for b in range(batch)]
    commits = log.fsyncs - start_fsyncs
    assert 1 <= commits < threads_n * appends_n


def test_interval_mode_reads_only_durable_events_and_close_syncs(tmp_path):
    log = LocalEventLog(tmp_path, fsync="interval", interval_ms=60_000)
    assert log.append([ev(0), ev(1)]) == 2
    assert log.durable_offset == 0  # the background sync is a minute away
    assert log.read(0) == []
    assert log.sync() == 2
    assert log.read(0) == [(0, ev(0)), (1, ev(1))]
    assert log.append([ev(2)]) == 3
    log.close()
    with LocalEventLog(tmp_path, fsync="interval") as log:
        assert log.recovered == {}
        assert log.read(0) == [(k, ev(k)) for k in range(3)]


def test_interval_mode_syncs_in_the_background(tmp_path):
    with LocalEventLog(tmp_path, fsync="interval", interval_ms=10) as log:
        before = log.fsyncs
        end = log.append([ev(k) for k in range(10)])
        deadline = time.monotonic() + 30  # a liveness bound, not a speed assertion
        while log.durable_offset < end and time.monotonic() < deadline:
            time.sleep(0.005)
        assert log.durable_offset == end
        assert log.fsyncs > before
        assert log.read(0) == [(k, ev(k)) for k in range(10)]


CHILD = """
import sys
from covisit.core.eventlog import LocalEventLog
from covisit.core.events import Event

def ev(k):
    return Event(f"u{k % 7}", f"item-{k}", "view", 1000.0 + k, None if k % 2 else f"s{k % 3}")

log = LocalEventLog(sys.argv[1], segment_bytes=4096)
n = log.durable_offset
while True:
    n = log.append([ev(k) for k in range(n, n + 10)])
    print(n, flush=True)
"""


def test_kill_9_loses_no_acknowledged_event(tmp_path):
    """Kill a writing process three times; every offset it printed is in the reopened log."""
    acked = 0
    for acks_before_kill in (3, 40, 150):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watchdog = threading.Timer(120, proc.kill)
        watchdog.start()
        try:
            for _ in range(acks_before_kill):
                line = proc.stdout.readline()
                assert line.endswith("\n"), proc.stderr.read()
                acked = max(acked, int(line))
            proc.send_signal(signal.SIGKILL)
            # read through proc.stdout, not communicate(): that reads the raw pipe and would miss
            # acks readline() has already buffered ahead
            out = proc.stdout.read()
            proc.wait()
            proc.stderr.close()
            proc.stdout.close()
        finally:
            watchdog.cancel()
        assert proc.returncode == -signal.SIGKILL
        for line in out.splitlines(keepends=True):  # acks printed before the kill count too
            if line.endswith("\n"):
                acked = max(acked, int(line))

        with LocalEventLog(tmp_path, segment_bytes=4096) as log:
            assert log.durable_offset >= acked
            got = log.read(0)
        assert acked <= len(got) <= acked + 10  # at most the batch in flight beyond the acks
        assert got == [(k, ev(k)) for k in range(len(got))]
    assert len(segment_names(tmp_path)) > 3  # the child rolled segments too

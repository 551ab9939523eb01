"""The prediction log on real files: record format, rotation and retention, numbering across
restarts, sampling by request id, flushing on close, and drops counted when the writer lags."""

import json
import threading

import pytest

from covisit.core import kernels_topk as kt
from covisit.core import prediction_log
from covisit.core.prediction_log import PredictionLog, log_files, sampled


def lines(directory) -> list[dict]:
    return [json.loads(line) for path in log_files(directory) for line in path.read_text().splitlines()]


def test_records_as_written(tmp_path):
    log = PredictionLog(tmp_path, clock=lambda: 12.5)
    log.response("r1", "u1", ["c1", "c2"], [("a", kt.SOURCE_COOCCURRENCE), ("b", kt.SOURCE_EXPLORATION)],
                 version=3, arm="ab")
    log.impression("r1", ["a", "b"])
    log.click("r1", "b")
    log.close()
    assert (log.written, log.dropped) == (3, 0)
    assert [p.name for p in log_files(tmp_path)] == ["predictions-00000000.jsonl"]
    assert lines(tmp_path) == [
        {"type": "response", "time": 12.5, "request_id": "r1", "user_id": "u1", "context": ["c1", "c2"],
         "items": [{"item_id": "a", "source": "COOCCURRENCE"}, {"item_id": "b", "source": "EXPLORATION"}],
         "version": 3, "arm": "ab"},
        {"type": "impression", "time": 12.5, "request_id": "r1", "item_ids": ["a", "b"]},
        {"type": "click", "time": 12.5, "request_id": "r1", "item_id": "b"},
    ]


def test_bad_arm_or_source_is_refused(tmp_path):
    log = PredictionLog(tmp_path)
    with pytest.raises(ValueError, match="arm"):
        log.response("r", "u", [], [("a", 0)], 1, "shadow")
    with pytest.raises(ValueError, match="source 9"):
        log.response("r", "u", [], [("a", 9)], 1, "serving")
    log.close()
    assert log.written == 0


def test_files_rotate_and_only_the_newest_are_kept(tmp_path):
    log = PredictionLog(tmp_path, max_file_bytes=200, max_files=3, clock=lambda: 1.0)
    for i in range(30):
        log.click(f"r{i:02d}", "item")  # 64-byte lines: three fit in 200 bytes, a fourth would not
    log.close()
    files = log_files(tmp_path)
    assert [p.name for p in files] == [f"predictions-{n:08d}.jsonl" for n in (7, 8, 9)]
    assert all(p.stat().st_size <= 200 for p in files)
    assert [r["request_id"] for r in lines(tmp_path)] == [f"r{i:02d}" for i in range(21, 30)]
    assert log.written == 30

    restarted = PredictionLog(tmp_path, max_file_bytes=200, max_files=3)
    restarted.click("again", "item")
    restarted.close()
    assert [p.name for p in log_files(tmp_path)][-1] == "predictions-00000010.jsonl"
    assert lines(tmp_path)[-1]["request_id"] == "again"


def test_a_line_longer_than_a_file_gets_a_file_of_its_own(tmp_path):
    log = PredictionLog(tmp_path, max_file_bytes=50)
    log.click("r1", "x" * 100)
    log.click("r2", "x")
    log.close()
    assert [len(path.read_text().splitlines()) for path in log_files(tmp_path)] == [1, 1]


def test_sampling_keeps_whole_requests_at_about_the_rate(tmp_path):
    log = PredictionLog(tmp_path, sample_rate=0.3)
    ids = [f"req-{i}" for i in range(5000)]
    for rid in ids:
        log.response(rid, "u", [], [("a", 0)], 1, "serving")
        log.impression(rid, ["a"])
        log.click(rid, "a")
    log.close()
    records = lines(tmp_path)
    by_type = {kind: [r["request_id"] for r in records if r["type"] == kind]
               for kind in ("response", "impression", "click")}
    assert by_type["response"] == by_type["impression"] == by_type["click"]  # whole requests
    assert len(by_type["response"]) / len(ids) == pytest.approx(0.3, abs=0.02)
    assert by_type["response"] == [rid for rid in ids if sampled(rid, 0.3)]  # stable, same rule
    assert all(sampled(rid, 1.0) for rid in ids) and not any(sampled(rid, 0.0) for rid in ids)
    assert all(sampled(rid, 0.5) for rid in by_type["response"])  # a lower rate's sample is inside


def test_a_full_queue_drops_and_counts(tmp_path, monkeypatch):
    inside_open, release = threading.Event(), threading.Event()
    real_open = prediction_log._open

    def held_open(*args):
        inside_open.set()
        release.wait()
        return real_open(*args)

    monkeypatch.setattr(prediction_log, "_open", held_open)
    log = PredictionLog(tmp_path, queue_size=2)
    log.click("r0", "a")
    assert inside_open.wait(10)  # the writer took r0 and waits inside open: the queue is empty
    for i in range(1, 6):
        log.click(f"r{i}", "a")  # r1 and r2 fill the queue, r3..r5 find it full
    assert log.dropped == 3
    release.set()
    log.close()
    assert (log.written, log.dropped) == (3, 3)
    assert [r["request_id"] for r in lines(tmp_path)] == ["r0", "r1", "r2"]
    log.click("late", "a")  # after close: counted, not lost silently
    assert log.dropped == 4


def test_a_failed_write_is_counted_and_the_next_file_tried(tmp_path, monkeypatch):
    real_open = prediction_log._open
    calls = []

    def failing_once(*args):
        calls.append(args[0])
        if len(calls) == 1:
            raise OSError("disk full")
        return real_open(*args)

    monkeypatch.setattr(prediction_log, "_open", failing_once)
    log = PredictionLog(tmp_path)
    log.click("r0", "a")
    log.click("r1", "a")
    log.close()
    assert (log.written, log.dropped) == (1, 1)
    assert [p.name for p in log_files(tmp_path)] == ["predictions-00000001.jsonl"]


def test_close_writes_out_everything_queued(tmp_path):
    log = PredictionLog(tmp_path, queue_size=100_000)
    for i in range(20_000):
        log.impression(f"r{i}", ["a", "b"])
    log.close()
    assert log.written == 20_000 and log.dropped == 0
    assert len(lines(tmp_path)) == 20_000
    log.close()  # a second close is harmless


def test_a_record_json_cannot_hold_is_counted_and_the_writer_goes_on(tmp_path):
    log = PredictionLog(tmp_path)
    log.impression("r0", [object()])
    log.impression("r1", ["a"])
    log.close()
    assert (log.written, log.dropped) == (1, 1)
    assert [r["request_id"] for r in lines(tmp_path)] == ["r1"]

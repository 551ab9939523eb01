"""A bounded, rotating JSONL log of responses, impressions and clicks, for offline analysis
(report.py reads it back).

Each line is one JSON object with "type" ("response", "impression" or "click"), "time" (the
clock's seconds when the call was made) and "request_id", and then:

    response:    "user_id", "context" (item ids, newest last), "items" ([{"item_id", "source"}]
                 in served order, the source by name), "version", "arm" ("serving" or "ab")
    impression:  "item_ids"
    click:       "item_id"

Request threads never touch the disk: they put records on a bounded queue that one writer
thread drains; a record that finds the queue full is dropped and counted in `dropped`. Files are
predictions-<number>.jsonl, numbered on from the newest file already in the directory; a file
that would grow past `max_file_bytes` is closed and a new one begun, and only the newest
`max_files` are kept. This is an analysis log, not a durable one: lines are flushed when the
queue runs empty, never fsynced, so a crash can lose the last records and tear the last line.

Sampling keeps a request whole: a stable hash of the request id decides, so the impressions
and clicks of a sampled response are sampled too, in every process and after restarts.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from covisit.core.exposure import source_name

log = logging.getLogger(__name__)

FILE_NAME = re.compile(r"^predictions-(\d+)\.jsonl$")
ARMS = ("serving", "ab")
_HASH_RANGE = 2**32
_open = open  # a module name, so tests can hold the writer inside an open


def file_name(number: int) -> str:
    return f"predictions-{number:08d}.jsonl"


def log_files(directory: str | os.PathLike) -> list[Path]:
    """The log files in `directory`, oldest (lowest number) first."""
    numbered = []
    for path in Path(directory).iterdir():
        match = FILE_NAME.match(path.name)
        if match:
            numbered.append((int(match.group(1)), path))
    return [path for _, path in sorted(numbered)]


def sampled(request_id: str, sample_rate: float) -> bool:
    """Whether `request_id` is in the sample: its CRC32 falls in the first `sample_rate` of the
    hash range (the same answer for all of a request's records)."""
    return zlib.crc32(request_id.encode("utf-8", "surrogatepass")) < sample_rate * _HASH_RANGE


class PredictionLog:
    """A bounded, rotating JSONL log of responses, impressions and clicks, for offline analysis.

    The record methods are thread-safe and never block: they do O(len(items)) work and one
    queue put. Call `close` to write out what is queued."""

    def __init__(self, directory: str | os.PathLike, sample_rate: float = 1.0,
                 max_file_bytes: int = 64 * 2**20, max_files: int = 10,
                 clock: Callable[[], float] = time.time, queue_size: int = 10_000):
        if not 0 <= sample_rate <= 1:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        if max_file_bytes < 1 or max_files < 1 or queue_size < 1:
            raise ValueError("max_file_bytes, max_files and queue_size must be >= 1")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sample_rate, self.max_file_bytes, self.max_files = sample_rate, max_file_bytes, max_files
        self.clock = clock
        files = log_files(self.directory)
        # A restart begins a new file: the newest may end in a line torn by a crash.
        self._next_number = int(FILE_NAME.match(files[-1].name).group(1)) + 1 if files else 0
        self._file: IO[bytes] | None = None
        self._file_bytes = 0
        self._written = 0
        self._dropped = 0
        self._closed = False
        self._lock = threading.Lock()  # guards _dropped and _closed
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(queue_size)
        self._writer = threading.Thread(target=self._write_all, name="covisit-prediction-log",
                                        daemon=True)
        self._writer.start()

    @property
    def dropped(self) -> int:
        """Records dropped: the queue was full, the log closed, or a write failed."""
        return self._dropped

    @property
    def written(self) -> int:
        """Records written to a file (flushed to the OS once the queue runs empty)."""
        return self._written

    def response(self, request_id: str, user_id: str, context: Sequence[str],
                 items: Sequence[tuple[str, int]], version: int, arm: str) -> None:
        """A response served to `user_id`: `items` as (item_id, source int), best first."""
        if arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
        if not sampled(request_id, self.sample_rate):
            return
        self._put({"type": "response", "time": self.clock(), "request_id": request_id,
                   "user_id": user_id, "context": list(context),
                   "items": [{"item_id": item, "source": source_name(source)} for item, source in items],
                   "version": int(version), "arm": arm})

    def impression(self, request_id: str, item_ids: Sequence[str]) -> None:
        if sampled(request_id, self.sample_rate):
            self._put({"type": "impression", "time": self.clock(), "request_id": request_id,
                       "item_ids": list(item_ids)})

    def click(self, request_id: str, item_id: str) -> None:
        if sampled(request_id, self.sample_rate):
            self._put({"type": "click", "time": self.clock(), "request_id": request_id,
                       "item_id": item_id})

    def close(self) -> None:
        """Write out everything queued and stop the writer; later records count as dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)  # may wait for the writer to make room: never on a request thread
        self._writer.join()

    def _put(self, record: dict[str, Any]) -> None:
        with self._lock:  # under the lock, so no record slips in behind close()'s sentinel
            if not self._closed:
                try:
                    self._queue.put_nowait(record)
                    return
                except queue.Full:
                    pass
            self._dropped += 1

    # ---- the writer thread --------------------------------------------------------------------
    def _write_all(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                break
            self._write(record)
            if self._queue.empty() and self._file is not None:
                self._flush()
        if self._file is not None:
            self._flush()
            self._close_file()

    def _write(self, record: dict[str, Any]) -> None:
        try:
            # ASCII JSON (non-ASCII as \u escapes), so every id encodes, even a lone surrogate.
            line = (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")
        except (TypeError, ValueError):  # a caller passed something JSON cannot hold
            log.exception("prediction log: cannot encode a %s record; it is dropped", record["type"])
            self._count_dropped()
            return
        try:
            full = self._file_bytes and self._file_bytes + len(line) > self.max_file_bytes
            if self._file is None or full:
                self._rotate()
            self._file.write(line)
        except OSError:
            log.exception("prediction log: cannot write to %s; the record is dropped", self.directory)
            self._count_dropped()
            self._close_file()  # the next record tries a new file
            return
        self._file_bytes += len(line)
        self._written += 1

    def _count_dropped(self) -> None:
        with self._lock:
            self._dropped += 1

    def _flush(self) -> None:
        try:
            self._file.flush()
        except OSError:
            log.exception("prediction log: cannot flush to %s", self.directory)

    def _close_file(self) -> None:
        """Close the current file after a write or flush, which logged any error it met."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the same error the failed write or flush has logged
            self._file = None

    def _rotate(self) -> None:
        """Close the current file, begin the next one and delete the oldest beyond max_files."""
        if self._file is not None:
            self._file.close()
            self._file = None
        path = self.directory / file_name(self._next_number)
        self._next_number += 1
        self._file = _open(path, "xb")
        self._file_bytes = 0
        for old in log_files(self.directory)[:-self.max_files]:
            old.unlink(missing_ok=True)

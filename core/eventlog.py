"""The durable event log: every acknowledged event is on disk, in order, and can be replayed.

`EventLog` is the interface; `LocalEventLog` is the embedded implementation
(`covisit.core.jetstream_log.JetStreamEventLog` is the distributed one, over NATS JetStream).

On disk a `LocalEventLog` is a directory of segment files `NNNNNNNNNNNNNNNNNNNN.seg`, each named
by the offset (0-based index in the whole log) of its first event. A segment is a run of records:

    record  = length u32 | crc32c(payload) u32 | payload        (little-endian)
    payload = version u8 (=1) | timestamp f64 | 4 x u16 byte lengths | UTF-8 bytes
              of user_id, item_id, event_type, session_id   (session length 0xFFFF = None)

Durability: with fsync="always" an `append` returns only after an fdatasync covers its events;
threads appending at the same time share one fdatasync (group commit). With fsync="interval" a
background thread syncs at most every `interval_ms` and `append` returns after the write: a
process crash loses nothing (the data is in the OS page cache), a power loss can lose the last
interval. `read` returns only durable events, so a reader never sees an event a crash could
take back.

A segment is synced before the next one is created, so only the last segment can end in a torn
write; opening the log cuts such a tail off (see `recovered`). A batch is written with one
write, but a crash can still leave a prefix of an unacknowledged batch in the log.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import re
import struct
import threading
import time
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import google_crc32c

from covisit.core.durable import fsync_dir
from covisit.core.errors import CovisitError
from covisit.core.events import Event

log = logging.getLogger(__name__)

_RECORD_HEADER = struct.Struct("<II")  # payload length, CRC32C of the payload
_PAYLOAD_HEADER = struct.Struct("<BdHHHH")  # version, timestamp, 4 string byte lengths
_VERSION = 1
_NO_SESSION = 0xFFFF
_MAX_FIELD_BYTES = 0xFFFE
_MAX_PAYLOAD = _PAYLOAD_HEADER.size + 4 * _MAX_FIELD_BYTES
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_INDEX_STRIDE = 256  # the sparse index keeps the byte position of every 256th event
_fdatasync = getattr(os, "fdatasync", os.fsync)  # a module name, so tests can slow it down
_crc32c = google_crc32c.value


class EventLogError(CovisitError):
    """The log cannot do what was asked (closed, a failed fsync, ...)."""


class CorruptLogError(EventLogError):
    """A record that cannot be a torn write is damaged: the log needs an operator."""


class OffsetOutOfRange(EventLogError, LookupError):
    """The asked offset was deleted by `delete_before`."""


class OffsetMismatch(EventLogError):
    """An `append(..., expect_offset=...)` found the log ending elsewhere: the event meant for
    offset `expected` (and those after it) was not appended."""

    def __init__(self, expected: int, actual: int):
        super().__init__(f"the append expected the log to end at offset {expected}, but it"
                         f" ends at {actual}; nothing from there on was appended")
        self.expected = expected
        self.actual = actual


@runtime_checkable
class EventLog(Protocol):
    """An ordered, durable, replayable sequence of events; offset = 0-based index in the log."""

    def append(self, events: Sequence[Event], *, expect_offset: int | None = None) -> int:
        """Append `events` in order; return the offset after the last one, once they are as
        durable as the implementation's policy promises.

        With `expect_offset`, append only if the log ends exactly there when the first event
        is stored, else append nothing and raise OffsetMismatch (optimistic concurrency:
        of appenders racing with the same expect_offset, exactly one gets its batch in). A
        shared log may also raise it later in the batch, another appender having got in: the
        events before stay, each at its own offset, and `actual` says where the log ends."""
        ...

    def read(self, from_offset: int, max_events: int | None = None) -> list[tuple[int, Event]]:
        """Durable events from `from_offset` on (at most `max_events`) with their offsets;
        an empty list at or past the end."""
        ...

    @property
    def durable_offset(self) -> int:
        """Events [0, durable_offset) are durable."""
        ...

    @property
    def start_offset(self) -> int:
        """The first offset still readable (older events were deleted once checkpoints covered them)."""
        ...

    def delete_before(self, offset: int) -> int:
        """Delete what lies wholly before `offset`, as far as the log's storage allows; return
        how many pieces (segments) went."""
        ...

    def close(self) -> None:
        """Make everything appended durable and release the log."""
        ...


class MemoryEventLog:
    """An `EventLog` in a list: nothing survives the process (an engine without a data dir)."""

    def __init__(self):
        self._events: list[Event] = []
        self._lock = threading.Lock()

    def append(self, events: Sequence[Event], *, expect_offset: int | None = None) -> int:
        check_expect_offset(expect_offset)
        with self._lock:
            if expect_offset is not None and expect_offset != len(self._events):
                raise OffsetMismatch(expect_offset, len(self._events))
            self._events.extend(events)
            return len(self._events)

    def read(self, from_offset: int, max_events: int | None = None) -> list[tuple[int, Event]]:
        check_read_args(from_offset, max_events)
        with self._lock:
            stop = len(self._events) if max_events is None else from_offset + max_events
            return list(enumerate(self._events[from_offset:stop], start=from_offset))

    @property
    def durable_offset(self) -> int:
        return len(self._events)

    start_offset = 0

    def delete_before(self, offset: int) -> int:
        return 0  # memory is not the bound here; keeping everything keeps replays possible

    def close(self) -> None:
        pass


def check_expect_offset(expect_offset: int | None) -> None:
    """ValueError unless `expect_offset` is None or an offset."""
    if expect_offset is not None and expect_offset < 0:
        raise ValueError(f"expect_offset must be >= 0 or None, got {expect_offset}")


def check_read_args(from_offset: int, max_events: int | None) -> None:
    """ValueError unless `read(from_offset, max_events)` asks for a possible range."""
    if from_offset < 0:
        raise ValueError(f"from_offset must be >= 0, got {from_offset}")
    if max_events is not None and max_events < 0:
        raise ValueError(f"max_events must be >= 0 or None, got {max_events}")


def encode_event(event: Event) -> bytes:
    """One record (header + payload) for `event`."""
    try:
        user = event.user_id.encode("utf-8")
        item = event.item_id.encode("utf-8")
        kind = event.event_type.encode("utf-8")
        session = b"" if event.session_id is None else event.session_id.encode("utf-8")
    except (AttributeError, UnicodeEncodeError) as exc:
        raise ValueError(f"event ids must be UTF-8 strings: {event!r}") from exc
    if max(len(user), len(item), len(kind), len(session)) > _MAX_FIELD_BYTES:
        raise ValueError(f"an event field is longer than {_MAX_FIELD_BYTES} bytes: {event!r}")
    payload = b"".join((
        _PAYLOAD_HEADER.pack(_VERSION, event.timestamp, len(user), len(item), len(kind),
                             _NO_SESSION if event.session_id is None else len(session)),
        user, item, kind, session,
    ))
    return _RECORD_HEADER.pack(len(payload), _crc32c(payload)) + payload


def decode_payload(payload: bytes) -> Event:
    """The event in a record's payload (whose CRC was checked)."""
    version, ts, n_user, n_item, n_kind, n_session = _PAYLOAD_HEADER.unpack_from(payload)
    if version != _VERSION:
        raise CorruptLogError(f"unknown record version {version}")
    a = _PAYLOAD_HEADER.size
    b = a + n_user
    c = b + n_item
    d = c + n_kind
    session = None if n_session == _NO_SESSION else payload[d:d + n_session].decode("utf-8")
    return Event(payload[a:b].decode("utf-8"), payload[b:c].decode("utf-8"),
                 payload[c:d].decode("utf-8"), ts, session)


def decode_record(record: bytes) -> Event:
    """The event in one whole record as `encode_event` made it (a message of a distributed
    log); CorruptLogError if it is damaged."""
    end, why = _check_record(record, 0)
    if why is None and end != len(record):
        why = f"{len(record) - end} bytes after the record"
    if why:
        raise CorruptLogError(f"a damaged record: {why}")
    return decode_payload(record[_RECORD_HEADER.size:])


def _check_record(buf, pos: int) -> tuple[int, str | None]:
    """(end of the record at `pos`, None) if it is whole and its CRC matches, else (pos, why)."""
    if pos + _RECORD_HEADER.size > len(buf):
        return pos, "partial header"
    length, crc = _RECORD_HEADER.unpack_from(buf, pos)
    if not _PAYLOAD_HEADER.size <= length <= _MAX_PAYLOAD:  # e.g. a zero-filled tail
        return pos, f"impossible payload length {length}"
    start = pos + _RECORD_HEADER.size
    if start + length > len(buf):
        return pos, "partial payload"
    if _crc32c(buf[start:start + length]) != crc:
        return pos, "CRC mismatch"
    return start + length, None


class _Segment:
    """One segment file: its first offset, how many events and bytes it holds, a sparse index."""

    def __init__(self, directory: Path, base: int):
        self.base = base
        self.path = directory / f"{base:020d}.seg"
        self.count = 0
        self.size = 0
        self.index = array("q")  # byte position of event base + k * _INDEX_STRIDE

    def note(self, size: int) -> None:
        """Account for one more record of `size` bytes at the end."""
        if self.count % _INDEX_STRIDE == 0:
            self.index.append(self.size)
        self.count += 1
        self.size += size

    @property
    def end(self) -> int:
        return self.base + self.count


class LocalEventLog:
    """An `EventLog` in local segment files with CRC32C records and group-committed fsyncs.

    One process at a time: the directory is locked (flock) while the log is open.
    """

    def __init__(self, directory: str | os.PathLike, *,
                 fsync: Literal["always", "interval"] = "always", interval_ms: float = 50,
                 segment_bytes: int = 64 * 1024 * 1024):
        if fsync not in ("always", "interval"):
            raise ValueError(f"fsync must be 'always' or 'interval', got {fsync!r}")
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms!r}")
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be > 0, got {segment_bytes!r}")
        self.directory = Path(directory)
        self.fsync_policy = fsync
        self.segment_bytes = segment_bytes
        self.recovered: dict = {}  # the torn tail opening cut off: segment, bytes, reason
        self.fsyncs = 0  # fdatasyncs of segment data; one group commit counts once
        self.on_fsync = lambda seconds: None  # each fdatasync's duration (for metrics)

        # _write_lock guards the files, _segments, _written and _closed; _cond guards _durable,
        # _syncing, _failed and fsyncs. Order: _write_lock, then _cond, never the other way.
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._syncing = False
        self._failed: BaseException | None = None
        self._closed = False

        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise EventLogError(f"{self.directory} is already open in another log") from exc
            self._segments = self._open_segments()
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
            # What a crashed process left in the page cache may not be on disk yet.
            self._sync_fd(self._fd)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._written = self._durable = self._segments[-1].end

        self._stop = threading.Event()
        self._syncer = None
        if fsync == "interval":
            self._syncer = threading.Thread(target=self._sync_every, args=(interval_ms / 1000,),
                                            name="eventlog-sync", daemon=True)
            self._syncer.start()

    # -- the EventLog interface ------------------------------------------------------------

    def append(self, events: Sequence[Event], *, expect_offset: int | None = None) -> int:
        """See `EventLog.append`. `expect_offset` is compared, under the lock that orders the
        writes, with the offset this append would start at: the end of every append made so
        far, synced or not (in interval mode `durable_offset` can lag behind it)."""
        check_expect_offset(expect_offset)
        records = [encode_event(e) for e in events]  # a bad event fails before any write
        data = b"".join(records)
        with self._write_lock:
            self._check_usable()
            if expect_offset is not None and expect_offset != self._written:
                raise OffsetMismatch(expect_offset, self._written)
            segment = self._segments[-1]
            if segment.size and segment.size + len(data) > self.segment_bytes:
                segment = self._roll()
            try:
                _write_all(self._fd, data)
            except BaseException:
                self._undo_partial_write(segment)
                raise
            for record in records:
                segment.note(len(record))
            self._written = end = segment.end
        if self.fsync_policy == "always":
            self._wait_durable(end)
        return end

    def read(self, from_offset: int, max_events: int | None = None) -> list[tuple[int, Event]]:
        check_read_args(from_offset, max_events)
        with self._write_lock:
            first = self._segments[0].base
            if from_offset < first:
                raise OffsetOutOfRange(f"events before offset {first} were deleted;"
                                       f" asked for {from_offset}")
            stop = self.durable_offset
            if max_events is not None:
                stop = min(stop, from_offset + max_events)
            if from_offset >= stop:
                return []
            k = bisect_right([s.base for s in self._segments], from_offset) - 1
            plan = []  # (segment, offset to start the walk at, its byte position, stop)
            for segment in self._segments[k:]:
                if segment.base >= stop:
                    break
                i = max(0, from_offset - segment.base) // _INDEX_STRIDE
                plan.append((segment, segment.base + i * _INDEX_STRIDE, segment.index[i],
                             min(stop, segment.end)))
        out: list[tuple[int, Event]] = []
        for segment, offset, pos, seg_stop in plan:
            self._read_segment(segment, offset, pos, from_offset, seg_stop, out)
        return out

    @property
    def durable_offset(self) -> int:
        with self._cond:
            return self._durable

    def close(self) -> None:
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        with self._write_lock:
            if self._closed:
                return
            self._closed = True  # no more writes, so the sync below covers every one made
            end = self._written
        try:
            if self._failed is None:
                self._wait_durable(end)
        finally:
            with self._write_lock:
                os.close(self._fd)
                os.close(self._lock_fd)

    # -- beyond the interface --------------------------------------------------------------

    def sync(self) -> int:
        """Make everything appended so far durable (for fsync="interval"); return its end."""
        with self._write_lock:
            self._check_usable()
            end = self._written
        self._wait_durable(end)
        return end

    def delete_before(self, offset: int) -> int:
        """Delete the segments whose events all lie before `offset` (never the active one);
        return how many were deleted."""
        deleted = 0
        with self._write_lock:
            while len(self._segments) > 1 and self._segments[0].end <= offset:
                os.unlink(self._segments.pop(0).path)
                deleted += 1
            if deleted:
                fsync_dir(self.directory)
        return deleted

    @property
    def size_bytes(self) -> int:
        """Bytes in the segment files."""
        with self._write_lock:
            return sum(segment.size for segment in self._segments)

    @property
    def start_offset(self) -> int:
        """The first offset still readable (`delete_before` moves it up)."""
        with self._write_lock:
            return self._segments[0].base

    def __enter__(self) -> LocalEventLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- opening ---------------------------------------------------------------------------

    def _open_segments(self) -> list[_Segment]:
        bases = sorted(int(m.group(1)) for p in self.directory.iterdir()
                       if (m := _SEGMENT_NAME.match(p.name)))
        if not bases:
            segment = _Segment(self.directory, 0)
            os.close(os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            fsync_dir(self.directory)
            return [segment]
        segments: list[_Segment] = []
        for i, base in enumerate(bases):
            segment = _Segment(self.directory, base)
            if segments and segments[-1].end != base:
                raise CorruptLogError(f"{segment.path}: expected the segment after"
                                      f" {segments[-1].path.name} to start at offset"
                                      f" {segments[-1].end}")
            self._scan(segment, is_last=i == len(bases) - 1)
            segments.append(segment)
        return segments

    def _scan(self, segment: _Segment, is_last: bool) -> None:
        """Count and index the records of `segment`; cut off a torn tail if it is the last."""
        size = segment.path.stat().st_size
        pos, why = 0, None
        if size:
            with open(segment.path, "rb") as f, \
                    mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as buf:
                while pos < size:
                    end, why = _check_record(buf, pos)
                    if why:
                        break
                    segment.note(end - pos)
                    pos = end
        if why is None:
            return
        if not is_last:
            raise CorruptLogError(f"{segment.path}: {why} at byte {pos} of a segment that is"
                                  " not the last, so it is not a torn write")
        self.recovered = {"segment": segment.path.name, "truncated_bytes": size - pos,
                          "valid_bytes": pos, "reason": why}
        log.warning("event log %s: cut off a torn tail of %d bytes at byte %d (%s); the log"
                    " keeps %d events", segment.path, size - pos, pos, why, segment.end)
        fd = os.open(segment.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, pos)
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- writing and syncing ---------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise EventLogError("the event log is closed")
        if self._failed is not None:
            raise EventLogError("an earlier write or fsync failed; reopen the log to recover")

    def _roll(self) -> _Segment:
        """Sync and close the active segment, start the next one. Holds _write_lock."""
        old = self._segments[-1]
        try:
            self._sync_fd(self._fd)  # so an older segment never ends in a torn write
        except OSError as exc:
            with self._cond:
                self._failed = exc
            raise
        with self._cond:
            self._durable = max(self._durable, old.end)
            self._cond.notify_all()
        os.close(self._fd)
        segment = _Segment(self.directory, old.end)
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
                           0o644)
        fsync_dir(self.directory)
        self._segments.append(segment)
        return segment

    def _undo_partial_write(self, segment: _Segment) -> None:
        """After a failed write: cut the file back to its last whole record, or give up."""
        try:
            os.ftruncate(self._fd, segment.size)
        except OSError as exc:
            log.error("event log %s: cannot undo a failed write: %s", segment.path, exc)
            with self._cond:
                self._failed = exc

    def _wait_durable(self, end: int) -> None:
        """Return once [0, end) is durable. One waiter syncs for everyone waiting."""
        with self._cond:
            while self._durable < end:
                if self._failed is not None:
                    raise EventLogError("an fsync failed; the appended events may not be durable"
                                        ) from self._failed
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                self._cond.release()
                try:
                    target, error = self._sync_written()
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                if error is not None:
                    self._failed = error
                else:
                    self._durable = max(self._durable, target)

    def _sync_written(self) -> tuple[int, OSError | None]:
        """fdatasync everything written so far: (the offset it covers, the error if any)."""
        with self._write_lock:
            target = self._written
            fd = os.dup(self._fd)  # a concurrent _roll may close self._fd
        try:
            self._sync_fd(fd)
            return target, None
        except OSError as exc:  # the kernel may have dropped the dirty pages: no retry
            log.error("event log %s: fsync failed: %s", self.directory, exc)
            return target, exc
        finally:
            os.close(fd)

    def _sync_fd(self, fd: int) -> None:
        started = time.perf_counter()
        _fdatasync(fd)
        self.on_fsync(time.perf_counter() - started)
        with self._cond:
            self.fsyncs += 1

    def _sync_every(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.sync()
            except EventLogError:
                log.exception("event log %s: background sync stopped", self.directory)
                return

    # -- reading ---------------------------------------------------------------------------

    def _read_segment(self, segment: _Segment, offset: int, pos: int, from_offset: int,
                      stop: int, out: list[tuple[int, Event]]) -> None:
        """Add the events [from_offset, stop) of `segment` to `out`, walking from `offset`,
        whose record starts at byte `pos`."""
        try:
            f = open(segment.path, "rb")
        except FileNotFoundError as exc:
            raise OffsetOutOfRange(f"{segment.path.name} was deleted while reading") from exc
        with f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            while offset < stop:
                end, why = _check_record(buf, pos)
                if why:
                    raise CorruptLogError(f"{segment.path}: {why} at byte {pos} (offset {offset})")
                if offset >= from_offset:
                    out.append((offset, decode_payload(buf[pos + _RECORD_HEADER.size:end])))
                pos = end
                offset += 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

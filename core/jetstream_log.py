"""The event log as a NATS JetStream stream, shared by every replica of the service.

One message per event on one subject, its payload the CRC-checked record `encode_event` makes,
so offset = stream sequence - 1 with no index to keep: a purge by sequence cuts at an exact
offset, a retried publish is deduplicated per event (Nats-Msg-Id), and no batch can outgrow
the server's max payload. (A message per batch would save the per-message headers, but then
offsets need an index from sequence to event, and a replica must read whole batches.)

Durability: `append` returns once JetStream acknowledged every event's publish (PubAck). A
clustered stream acks after a quorum of its replicas stored the message, so an acknowledged
event survives the loss of a minority of the nodes; JetStream's file store syncs to disk on its
own interval, so it is replication, not fsync, that makes an ack durable here.

Order: the messages of one `append` go out back to back on this log's connection, in order,
so this log's batches do not interleave (another replica's, on its own connection, may).
Publishes without an ack (a node died, a leader election) are sent again with the same message
ids, so those JetStream already stored are not stored twice (within the stream's duplicate
window, 2 minutes by default); if a leader change loses an event while a later one of the same
batch got through, the retry puts the lost one after it.

Guarded appends (`expect_offset`): every message carries Nats-Expected-Last-Sequence, the
offset its event must land at (offset = sequence - 1, so the log's end is the last sequence),
and the first goes out alone, the rest only after its PubAck. So of replicas racing with the
same expect_offset exactly one stores its first event, and the others get OffsetMismatch having
sent nothing else; and no event of a guarded batch lands anywhere but at its own offset. Should
an event fail its guard after the first (another appender got in between), the events before
it stay and OffsetMismatch says where the log ends. A resent message whose original was stored
is answered by the message-id deduplication (checked before the expected sequence) with the
original's sequence, which counts as success, not as a mismatch.

Reads are batched direct gets (allow_direct), which any replica may answer: one behind the
leader returns fewer events, so `read` asks again until it has every event up to the end the
leader reported, and so sees all that `durable_offset` counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Sequence

import nats
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from covisit.core.eventlog import (
    CorruptLogError,
    EventLogError,
    OffsetMismatch,
    OffsetOutOfRange,
    check_expect_offset,
    check_read_args,
    decode_record,
    encode_event,
)
from covisit.core.events import Event
from covisit.core.loop_thread import LoopThread

log = logging.getLogger(__name__)

# The one header sent (JetStream stores headers with each message, and every read parses
# them), but for a guarded batch's first message: no Nats-Expected-Stream, since streams of an
# account cannot share a subject and opening checked that ours captures it.
MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
_WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code: "wrong last sequence: <the last sequence>"
_STATUS = "Status"
_NO_RESPONDERS = "503"  # no stream leader listens (an election) or no replica answers
_END_OF_BATCH = "204"
_NOT_FOUND = "404"
_STREAM_NAME_IN_USE = 10058  # JetStream's err_code when another replica created it first
_DIRECT_BATCH = 10_000  # events asked per direct get: bounds one response's memory
_REPLY_WAIT = 2.0  # seconds without a reply after which a request counts as lost
_RETRY_PAUSE = 0.1  # between attempts while the cluster elects a leader or reconnects
# Deadlines grow with the batch at this (low) rate, so a seeding append of 100k events has
# time to be acknowledged while a stuck cluster still fails a small append in `timeout`.
_SLOWEST_EVENTS_PER_SECOND = 1_000


class Transient(Exception):
    """A failure a leader election or a reconnect causes, which a retry soon gets past."""


_TRANSIENT_NATS_ERRORS = (asyncio.TimeoutError, nats.errors.NoRespondersError,
                          nats.errors.ConnectionReconnectingError,
                          nats.errors.OutboundBufferLimitError, ServiceUnavailableError)


async def retrying(attempt, deadline: float):
    """`await attempt()`, again after transient failures until `deadline` (time.monotonic)."""
    while True:
        try:
            return await attempt()
        except (Transient, *_TRANSIENT_NATS_ERRORS) as exc:
            if time.monotonic() + _RETRY_PAUSE >= deadline:
                raise Transient(repr(exc)) from exc
            await asyncio.sleep(_RETRY_PAUSE)


class JetStreamEventLog:
    """An `EventLog` over the JetStream stream `stream` (created on first use, file storage,
    `replicas` copies) capturing `subject`; `servers` are NATS URLs of the cluster.

    Every replica of the service opens the same stream and reads all of it in stream order.
    """

    def __init__(self, servers: str | Sequence[str], *, stream: str = "COVISIT_EVENTS",
                 subject: str = "covisit.events", replicas: int = 1, timeout: float = 10.0,
                 allow_purge: bool = False, client_name: str = "covisit"):
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.stream = stream
        self.subject = subject
        self.replicas = replicas
        self.timeout = timeout
        self.allow_purge = allow_purge
        self._client_name = client_name
        # Message ids unique across replicas and restarts: this log's id, the append, the event.
        self._id_prefix = uuid.uuid4().hex
        self._appends = 0
        self._closed = False
        self._state_lock = threading.Lock()  # guards _appends and _closed
        self._loop = LoopThread(f"jetstream-log-{stream}")
        try:
            self._loop.run(self._open(time.monotonic() + timeout), timeout + 1)
        except BaseException as exc:
            self._loop.close()
            if isinstance(exc, (Transient, TimeoutError, nats.errors.Error)):
                raise EventLogError(f"cannot open JetStream stream {stream} at {self.servers}:"
                                    f" {exc!r}") from exc
            raise

    # -- the EventLog interface ------------------------------------------------------------

    def append(self, events: Sequence[Event], *, expect_offset: int | None = None) -> int:
        """See `EventLog.append`; with `expect_offset`, the stream's last sequence must equal it
        when JetStream stores the first event (the module docstring says what that guards)."""
        check_expect_offset(expect_offset)
        records = [encode_event(e) for e in events]  # a bad event fails before any publish
        if not records:
            end = self.durable_offset
            if expect_offset is not None and expect_offset != end:
                raise OffsetMismatch(expect_offset, end)
            return end
        with self._state_lock:
            self._check_open()
            self._appends += 1
            ids = [f"{self._id_prefix}-{self._appends}-{i}" for i in range(len(records))]
        headers = [{MSG_ID: msg_id} for msg_id in ids]
        seconds = self._seconds_for(len(records))
        return self._call(self._publish_guarded(records, headers, expect_offset,
                                                time.monotonic() + seconds),
                          seconds, "acknowledge the append")

    def read(self, from_offset: int, max_events: int | None = None) -> list[tuple[int, Event]]:
        check_read_args(from_offset, max_events)
        start, end = self._state()
        if from_offset < start:
            raise OffsetOutOfRange(f"events before offset {start} were deleted;"
                                   f" asked for {from_offset}")
        stop = end if max_events is None else min(end, from_offset + max_events)
        out: list[tuple[int, Event]] = []
        seconds = self._seconds_for(_DIRECT_BATCH)
        while from_offset + len(out) < stop:  # a deadline per chunk: reads can be huge
            first = from_offset + len(out)
            chunk = (first, min(stop, first + _DIRECT_BATCH))
            out += self._call(self._read_range(*chunk, time.monotonic() + seconds), seconds,
                              "serve the read")
        return out

    @property
    def durable_offset(self) -> int:
        """The stream's last sequence: every event up to it was acknowledged by a quorum."""
        return self._state()[1]

    @property
    def start_offset(self) -> int:
        return self._state()[0]

    def delete_before(self, offset: int) -> int:
        """Purge the events before `offset`; return how many went. A no-op unless the log was
        made with allow_purge: the stream is shared, and another replica (or one that starts
        later from an older checkpoint) may still need events this replica's checkpoint covers,
        so only an operator who knows every replica's checkpoint may purge."""
        if not self.allow_purge:
            return 0
        with self._state_lock:
            self._check_open()
        return self._call(self._purge_before(offset, time.monotonic() + self.timeout),
                          self.timeout, "purge")

    def close(self) -> None:
        with self._state_lock:
            if self._closed:
                return
            self._closed = True  # appends are synchronous: none is waiting for an ack now
        try:
            self._loop.run(self._nc.close(), self.timeout)
        except TimeoutError:
            log.warning("JetStream log %s: the NATS connection did not close in %.0f s",
                        self.stream, self.timeout)
        finally:
            self._loop.close()

    def __enter__(self) -> JetStreamEventLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- calling the loop ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EventLogError("the event log is closed")

    def _seconds_for(self, events: int) -> float:
        return self.timeout + events / _SLOWEST_EVENTS_PER_SECOND

    def _call(self, coro, seconds: float, what: str):
        """Run `coro` on the loop; a deadline it missed or a lasting failure is an EventLogError."""
        try:
            return self._loop.run(coro, seconds + 1)  # the coroutine keeps its own deadline
        except (Transient, TimeoutError) as exc:
            raise EventLogError(f"JetStream stream {self.stream} did not {what} within"
                                f" {seconds:.0f} s: {exc}") from exc
        except nats.errors.Error as exc:
            raise EventLogError(f"JetStream stream {self.stream}: {exc}") from exc

    def _state(self) -> tuple[int, int]:
        with self._state_lock:
            self._check_open()
        return self._call(self._stream_offsets(time.monotonic() + self.timeout), self.timeout,
                          "report its state")

    # -- on the loop -----------------------------------------------------------------------

    async def _open(self, deadline: float) -> None:
        self._nc = await nats.connect(
            servers=self.servers, name=self._client_name, connect_timeout=self.timeout,
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.25,
            error_cb=self._on_error, disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect)
        self._jsm = self._nc.jsm(timeout=_REPLY_WAIT)
        # One subscription receives every PubAck; each publish waits on its own future.
        self._ack_prefix = self._nc.new_inbox()
        self._acks: dict[str, asyncio.Future] = {}
        self._ack_tokens = 0
        self._send_lock = asyncio.Lock()  # one append's messages go out back to back
        await self._nc.subscribe(self._ack_prefix + ".*", cb=self._on_ack)
        await retrying(self._ensure_stream, deadline)

    async def _ensure_stream(self) -> None:
        try:
            info = await self._jsm.stream_info(self.stream)
        except NotFoundError:
            config = StreamConfig(name=self.stream, subjects=[self.subject],
                                  storage=StorageType.FILE, num_replicas=self.replicas,
                                  allow_direct=True,  # reads are batched direct gets
                                  deny_delete=True)  # a hole would break offset = sequence - 1
            try:
                info = await self._jsm.add_stream(config)
            except BadRequestError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                info = await self._jsm.stream_info(self.stream)  # another replica won the race
        config = info.config
        if self.subject not in (config.subjects or []) or not config.allow_direct:
            raise EventLogError(f"JetStream stream {self.stream} exists but does not capture"
                                f" {self.subject} with allow_direct: {config.subjects},"
                                f" allow_direct={config.allow_direct}")
        if config.num_replicas != self.replicas:
            log.warning("JetStream stream %s has %s replicas, not the %d asked: keeping the"
                        " stream's", self.stream, config.num_replicas, self.replicas)

    async def _stream_offsets(self, deadline: float) -> tuple[int, int]:
        """(start_offset, durable_offset) as the stream leader reports them."""
        info = await retrying(lambda: self._jsm.stream_info(self.stream), deadline)
        state = info.state
        # An empty new stream reports first_seq 0; a purged one first_seq = last_seq + 1.
        return max(state.first_seq - 1, 0), state.last_seq

    # appending

    async def _publish_guarded(self, records: list[bytes], headers: list[dict[str, str]],
                               expect_offset: int | None, deadline: float) -> int:
        """Publish the records, each guarded at its own offset if `expect_offset` is given (the
        first alone); the offset after the last."""
        if expect_offset is None:
            return await self._publish_all(records, headers, deadline)
        guarded = [{**h, EXPECTED_LAST_SEQUENCE: str(expect_offset + i)} for i, h in enumerate(headers)]
        end = await self._publish_all(records[:1], guarded[:1], deadline, expect_offset)
        if len(records) == 1:
            return end
        return await self._publish_all(records[1:], guarded[1:], deadline, expect_offset + 1)

    async def _publish_all(self, records: list[bytes], headers: list[dict[str, str]],
                           deadline: float, expect_offset: int | None = None) -> int:
        """Publish until every record has an ack; the offset after the last."""
        sequences: list[int | None] = [None] * len(records)
        while True:
            missing = [i for i, seq in enumerate(sequences) if seq is None]
            if not missing:
                return max(sequences)
            replies = await self._publish([records[i] for i in missing],
                                          [headers[i] for i in missing], deadline)
            for i, reply in zip(missing, replies):
                if reply is not None:
                    sequences[i] = self._acked_sequence(reply, None if expect_offset is None else expect_offset + i)
            if None in sequences:
                if time.monotonic() + _RETRY_PAUSE >= deadline:
                    raise Transient(f"{sequences.count(None)} of {len(records)} events"
                                     " not acknowledged")
                await asyncio.sleep(_RETRY_PAUSE)

    async def _publish(self, records: list[bytes], headers: list[dict[str, str]],
                       deadline: float) -> list[Msg | None]:
        """Send the records back to back, then wait for their replies (None: none came)."""
        waiting: list[tuple[str, asyncio.Future]] = []
        try:
            async with self._send_lock:
                for record, record_headers in zip(records, headers):
                    self._ack_tokens += 1
                    token = str(self._ack_tokens)
                    future = self._acks[token] = asyncio.get_running_loop().create_future()
                    waiting.append((token, future))
                    await self._nc.publish(self.subject, record,
                                           reply=f"{self._ack_prefix}.{token}",
                                           headers=record_headers)
        except _TRANSIENT_NATS_ERRORS as exc:  # the unsent ones get no reply and are retried
            log.info("JetStream log %s: a publish failed (%r); retrying", self.stream, exc)
        replies = await self._replies(waiting, deadline)
        return replies + [None] * (len(records) - len(replies))

    async def _replies(self, waiting: list[tuple[str, asyncio.Future]],
                       deadline: float) -> list[Msg | None]:
        """The reply to each publish, waiting while replies keep coming (at most _REPLY_WAIT
        for the next one); None for those still missing, which are forgotten."""
        stalled = False
        replies = []
        for token, future in waiting:
            if not future.done() and not stalled:
                wait = min(_REPLY_WAIT, deadline - time.monotonic())
                done, _ = await asyncio.wait([future], timeout=max(wait, 0))
                stalled = not done
            if future.done():
                replies.append(future.result())
            else:
                replies.append(None)
                self._acks.pop(token, None)
        return replies

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.pop(msg.subject[len(self._ack_prefix) + 1:], None)
        if future is not None and not future.done():
            future.set_result(msg)

    def _acked_sequence(self, reply: Msg, expect_offset: int | None = None) -> int | None:
        """The stream sequence a PubAck gives (a duplicate's is the original's), None for a
        transient failure; a lasting one raises, OffsetMismatch for a failed guard."""
        if reply.headers and reply.headers.get(_STATUS) == _NO_RESPONDERS:
            return None
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error is None:
            # a duplicate of a message still being stored may be answered with sequence 0
            return answer["seq"] or None
        if error.get("code") == 503:
            return None
        if error.get("err_code") == _WRONG_LAST_SEQUENCE and expect_offset is not None:
            # "wrong last sequence: <last>"; -1 should another server version not say it
            last = re.search(r"(\d+)\s*$", error.get("description", ""))
            raise OffsetMismatch(expect_offset, int(last.group(1)) if last else -1)
        raise EventLogError(f"JetStream rejected a publish to {self.subject}: {error}")

    # reading

    async def _read_range(self, offset: int, stop: int,
                          deadline: float) -> list[tuple[int, Event]]:
        """The events [offset, stop), which the leader reported as stored."""
        out: list[tuple[int, Event]] = []
        while offset < stop:
            got = await retrying(lambda: self._direct_get(offset + 1, stop - offset),
                                       deadline)
            for sequence, data in got:
                if sequence > stop:
                    break
                if sequence != offset + 1:
                    raise self._gap(offset, sequence)
                out.append((offset, decode_record(data)))
                offset += 1
            if not got:  # a replica behind the leader answered: ask again
                if time.monotonic() + _RETRY_PAUSE >= deadline:
                    raise Transient(f"no replica served offset {offset} (of {stop})")
                await asyncio.sleep(_RETRY_PAUSE)
        return out

    def _gap(self, offset: int, sequence: int) -> EventLogError:
        if sequence > offset + 1:
            return OffsetOutOfRange(f"offset {offset} was purged while reading (next is"
                                    f" {sequence - 1})")
        return CorruptLogError(f"stream {self.stream} returned sequence {sequence} for offset"
                               f" {offset}")

    async def _direct_get(self, first_sequence: int, count: int) -> list[tuple[int, bytes]]:
        """Up to `count` (sequence, payload) pairs from `first_sequence` on, as one replica
        holds them: fewer, or none, when it is behind or the batch hit a size limit."""
        got: list[tuple[int, bytes]] = []
        ended = asyncio.get_running_loop().create_future()  # the status closing the batch

        async def collect(msg: Msg) -> None:  # a callback: no task per message, unlike next_msg
            status = msg.headers.get(_STATUS) if msg.headers else None
            if status is None:
                got.append((int(msg.headers["Nats-Sequence"]), msg.data))
            elif not ended.done():
                ended.set_result((status, msg.headers))

        sub = await self._nc.subscribe(self._nc.new_inbox(), cb=collect)
        try:
            request = json.dumps({"seq": first_sequence, "batch": count}).encode()
            await self._nc.publish(f"$JS.API.DIRECT.GET.{self.stream}", request,
                                   reply=sub.subject)
            while not ended.done():  # wait while messages keep coming
                before = len(got)
                await asyncio.wait([ended], timeout=_REPLY_WAIT)
                if not ended.done() and len(got) == before:
                    raise Transient(f"the direct get from sequence {first_sequence} stalled")
        finally:
            await sub.unsubscribe()
        status, headers = ended.result()
        if status in (_END_OF_BATCH, _NOT_FOUND):
            return got
        if status == _NO_RESPONDERS:
            raise Transient("no replica answered the direct get")
        raise EventLogError(f"direct get from {self.stream} failed: {headers}")

    # purging

    async def _purge_before(self, offset: int, deadline: float) -> int:
        start, end = await self._stream_offsets(deadline)
        keep_from = min(offset, end)  # a purge past the end would move the next sequence
        if keep_from <= start:
            return 0
        # purge up to (not including) a sequence keeps the sequence numbers, so offsets stay
        await retrying(lambda: self._jsm.purge_stream(self.stream, seq=keep_from + 1),
                             deadline)
        new_start, _ = await self._stream_offsets(deadline)
        return new_start - start

    # connection events (nats-py's defaults print tracebacks for each reconnect attempt)

    async def _on_error(self, exc: Exception) -> None:
        log.warning("JetStream log %s: NATS error: %r", self.stream, exc)

    async def _on_disconnect(self) -> None:
        if self._closed:  # close() disconnects on purpose
            return
        log.warning("JetStream log %s: disconnected from NATS; reconnecting", self.stream)

    async def _on_reconnect(self) -> None:
        log.info("JetStream log %s: reconnected to %s", self.stream, self._nc.connected_url)

"""Durability of `covisit serve` as a real process: acknowledged events survive SIGKILL at
random moments, and a damaged log tail is detected, reported and cut.

The checks go through the API while a server runs (it holds the log's lock), and read the log
directly (`LocalEventLog`) once it has stopped. "The model equals the log" is checked by the
server's counts digest against a batch build over the log.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from covisit.client import CovisitClient, Status
from covisit.client import Event as ClientEvent
from covisit.core.checkpoints import CheckpointStore
from covisit.core.eventlog import LocalEventLog, encode_event
from covisit.core.events import Event
from covisit.core.model import CoVisitModel
from covisit.server.config import load_config
from covisit.v1 import feedback_pb2, feedback_pb2_grpc
from tests.server.serving import NOW, TOKEN, eventually, free_port, write_events

ENV = {**os.environ, "COVISIT_ADMIN_TOKEN": TOKEN, "COVISIT_EXPLORATION_RATE": "0"}
MODEL_CONFIG = load_config(None, ENV, {}).model  # what the server processes count with
BATCH = 20  # events per RecordEvents call
WRITERS = 3  # threads streaming RecordEvents at once (their fsyncs are group-committed)
ROUNDS = 4  # SIGKILL and restart this many times
SETTLE_SECONDS = 30  # bound on the learner catching up with the log after a start
RECORD_HEADER = struct.Struct("<II")  # a log record's payload length and CRC (core/eventlog.py)


class ServerProcess:
    """One `covisit serve` process over `base/events.csv` and `base/data` on a free loopback
    port; its stderr (warnings and errors: it runs with -q) goes to `base/<name>.stderr`."""

    def __init__(self, base: Path, name: str):
        self.port = free_port()  # the CLI does not report the port it bound for --port 0
        self.target = f"127.0.0.1:{self.port}"
        self.stderr_path = base / f"{name}.stderr"
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "covisit.server.cli", "-q", "serve", "--preset", "",
                 "--data", str(base / "events.csv"), "--data-dir", str(base / "data"),
                 "--port", str(self.port)],
                env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_serving(self, timeout: float = 60) -> None:
        """Until health says SERVING; fails at once (with the server's stderr) if it exits."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.proc.poll() is None, \
                    f"the server exited ({self.proc.returncode}):\n{self.stderr()}"
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, f"never SERVING:\n{self.stderr()}"
                time.sleep(0.05)

    def client(self) -> CovisitClient:
        return CovisitClient(self.target, timeout=30, admin_token=TOKEN)

    def stop(self) -> None:
        """SIGTERM: a graceful stop, which exits 0."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.stderr()

    def kill(self) -> None:
        """SIGKILL: no chance to flush or close anything."""
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL


@pytest.fixture
def servers():
    """Start ServerProcess(base, name) with `servers(base, name)`; any still running at the
    end of the test are killed."""
    started: list[ServerProcess] = []

    def start(base: Path, name: str) -> ServerProcess:
        started.append(ServerProcess(base, name))
        return started[-1]

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def read_log(base: Path) -> list[Event]:
    """Every event in the stopped server's log, in order."""
    with LocalEventLog(base / "data" / "events") as log:
        return [event for _, event in log.read(0)]


def batch_digest(events: list[Event]) -> str:
    """The counts digest of a batch build over `events`."""
    model = CoVisitModel(MODEL_CONFIG)
    model.update(events)
    return model.digest()


def settle(client: CovisitClient) -> Status:
    """Wait until the model has learned the whole log (events == log_events, nothing pending);
    the status then, with the counts digest."""
    def caught_up() -> Status | None:
        status = client.get_status()
        return status if status.events_pending == 0 and status.events == status.log_events else None

    status = eventually(caught_up, timeout=SETTLE_SECONDS, interval=0.05)
    assert status.learning == "learning", status
    with_digest = client.get_status(counts_digest=True)
    assert (with_digest.events, with_digest.log_events) == (status.events, status.log_events)
    return with_digest


def batch_of(key: str, n: int = BATCH) -> list[Event]:
    """`n` events of one session `key`, each identified by (user, item, timestamp)."""
    return [Event(key, f"i{(len(key) + j) % 13}", "view", NOW + j, key) for j in range(n)]


def send(client: CovisitClient, events: list[Event]) -> None:
    assert client.record_events([ClientEvent(e.user_id, e.item_id, e.event_type, e.timestamp, e.session_id)
                                 for e in events]) == len(events)


# ---- SIGKILL under load --------------------------------------------------------------------

class Writer(threading.Thread):
    """Sends RecordEvents batches until a call fails (the server is killed); records which
    batches were acknowledged. No retries, so a call to a dead server fails fast and every
    batch is sent exactly once."""

    def __init__(self, target: str, prefix: str, killed: threading.Event):
        super().__init__(name=f"writer-{prefix}", daemon=True)
        self.target, self.prefix, self.killed = target, prefix, killed
        self.sent: dict[str, list[Event]] = {}
        self.acked: list[str] = []
        self.failure: tuple[str, grpc.StatusCode, bool] | None = None  # batch, code, after the kill

    def run(self) -> None:
        with grpc.insecure_channel(self.target, options=[("grpc.enable_retries", 0)]) as channel:
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            n = 0
            while True:
                key = f"{self.prefix}b{n}"
                n += 1
                self.sent[key] = batch = batch_of(key)
                request = feedback_pb2.RecordEventsRequest(events=[
                    feedback_pb2.Event(user_id=e.user_id, item_id=e.item_id, event_type=e.event_type,
                                       timestamp=e.timestamp, session_id=e.session_id) for e in batch])
                try:
                    stub.RecordEvents(request, timeout=10)
                except grpc.RpcError as exc:
                    self.failure = (key, exc.code(), self.killed.is_set())
                    return
                self.acked.append(key)


def stream_then_kill(server: ServerProcess, round_: int, delay: float) -> list[Writer]:
    """WRITERS threads stream RecordEvents; SIGKILL the server `delay` seconds after they start."""
    killed = threading.Event()
    writers = [Writer(server.target, f"r{round_}w{w}", killed) for w in range(WRITERS)]
    for writer in writers:
        writer.start()
    time.sleep(delay)
    killed.set()
    server.kill()
    for writer in writers:
        writer.join(timeout=30)
        assert not writer.is_alive(), f"{writer.name} hung after the kill"
    return writers


def test_acknowledged_events_survive_sigkill_at_random_moments(tmp_path, servers):
    """A client streams RecordEvents at load while the test sends SIGKILL to the server at
    random moments, several times; after each restart, every acknowledged event is in the log
    and in the model (count check), and the model's counts equal a batch build over the log."""
    rng = random.Random(7)
    seeded = write_events(tmp_path / "events.csv")
    server = servers(tmp_path, "start0")
    server.wait_serving()
    sent: dict[str, list[Event]] = {}  # batch key (its user and session) -> its events
    acked: set[str] = set()
    settled: list[Status] = []  # after each restart, once the model caught up with the log
    for round_ in range(ROUNDS):
        writers = stream_then_kill(server, round_, rng.uniform(0.2, 1.0))
        for writer in writers:
            sent.update(writer.sent)
            acked.update(writer.acked)
            assert writer.acked, f"round {round_}: {writer.name} got no batch acknowledged"
            key, code, after_kill = writer.failure
            assert after_kill and code == grpc.StatusCode.UNAVAILABLE, \
                f"round {round_}: {key} failed with {code} ({'after' if after_kill else 'before'} the kill)"
        acked_events = seeded + sum(len(sent[key]) for key in acked)

        server = servers(tmp_path, f"start{round_ + 1}")
        server.wait_serving()
        with server.client() as client:
            assert client.get_status().log_events >= acked_events  # every acknowledged event is logged
            status = settle(client)  # ... and learned: events == log_events
        assert status.events >= acked_events
        settled.append(status)
    server.stop()

    logged = read_log(tmp_path)
    assert len(logged) == settled[-1].log_events  # nothing was written after the last check
    seed = [e for e in logged if e.user_id not in sent]
    assert len(seed) == seeded and seed == logged[:seeded]
    by_batch: dict[str, list[Event]] = defaultdict(list)
    for event in logged[seeded:]:
        by_batch[event.user_id].append(event)
    for key, events in by_batch.items():  # in order, once; an unacknowledged batch may be cut short
        assert events == sent[key][:len(events)], key
    missing = [key for key in acked if by_batch.get(key) != sent[key]]
    assert not missing, f"acknowledged batches not (wholly) in the log: {sorted(missing)}"
    for round_, status in enumerate(settled):  # the log only grows, so each round's log is a prefix
        assert batch_digest(logged[:status.log_events]) == status.counts_digest, \
            f"round {round_}: the model's counts differ from a batch build over its log"


# ---- a damaged log -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, list[Event]]:
    """A stopped server's directory: the seeded log plus 3 recorded batches that no checkpoint
    covers (the checkpoint is the one written at the first start); and the log's events."""
    base = tmp_path_factory.mktemp("pristine")
    write_events(base / "events.csv")
    server = ServerProcess(base, "first")
    try:
        server.wait_serving()
        with server.client() as client:
            for n in range(3):
                send(client, batch_of(f"rec{n}"))
            settle(client)
        server.stop()
    finally:
        server.proc.kill()
        server.proc.wait()
    logged = read_log(base)
    covered = max(c.event_watermark for c in CheckpointStore(base / "data" / "checkpoints").list())
    assert covered < len(logged), f"a checkpoint covers the recorded events ({covered} of {len(logged)})"
    return base, logged


def copy_of(pristine: tuple[Path, list[Event]], tmp_path: Path) -> tuple[Path, list[Event]]:
    base = tmp_path / "server"
    shutil.copytree(pristine[0], base)
    return base, list(pristine[1])


def segments(base: Path) -> list[Path]:
    return sorted((base / "data" / "events").glob("*.seg"))


def record_starts(segment: Path) -> list[int]:
    """The byte position of each record in an undamaged segment."""
    data = segment.read_bytes()
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        pos += RECORD_HEADER.size + RECORD_HEADER.unpack_from(data, pos)[0]
    assert pos == len(data)
    return starts


def append_bytes(segment: Path, data: bytes) -> None:
    with open(segment, "ab") as f:
        f.write(data)


def flip_byte(segment: Path, pos: int, mask: int = 0x01) -> None:
    data = bytearray(segment.read_bytes())
    data[pos] ^= mask
    segment.write_bytes(bytes(data))


def torn_record(segment: Path) -> tuple[int, str]:
    append_bytes(segment, encode_event(batch_of("torn", 1)[0])[:20])  # header and part of the payload
    return 0, "partial payload"


def torn_header(segment: Path) -> tuple[int, str]:
    append_bytes(segment, b"\x2a\x00\x00")
    return 0, "partial header"


def zeroed_tail(segment: Path) -> tuple[int, str]:
    append_bytes(segment, bytes(512))  # a file extended without its data
    return 0, "impossible payload length 0"


def flipped_payload_byte(segment: Path) -> tuple[int, str]:
    last = record_starts(segment)[-1]
    flip_byte(segment, (last + RECORD_HEADER.size + segment.stat().st_size) // 2)
    return 1, "CRC mismatch"


def flipped_length_byte(segment: Path) -> tuple[int, str]:
    flip_byte(segment, record_starts(segment)[-1] + 2)  # the length grows by 65536
    return 1, "partial payload"


@pytest.mark.parametrize("damage", [torn_record, torn_header, zeroed_tail, flipped_payload_byte,
                                    flipped_length_byte], ids=lambda f: f.__name__)
def test_a_damaged_tail_is_cut_reported_and_the_server_starts(pristine, tmp_path, servers, damage):
    """A torn tail or a flipped byte in the last record of the last segment: the server logs
    the cut, starts, serves exactly the events before the damage, and appends after them."""
    base, before = copy_of(pristine, tmp_path)
    segment = segments(base)[-1]
    size, last = segment.stat().st_size, record_starts(segment)[-1]
    lost, why = damage(segment)  # how many whole events the damage destroyed; how it reads
    kept = before[:len(before) - lost]
    cut_at = last if lost else size
    report = (f"{segment}: cut off a torn tail of {segment.stat().st_size - cut_at} bytes at byte"
              f" {cut_at} ({why}); the log keeps {len(kept)} events")

    server = servers(base, "restart")
    server.wait_serving()
    later = batch_of("later")
    with server.client() as client:
        status = settle(client)  # the model learned exactly what the log kept
        assert status.log_events == len(kept)
        send(client, later)  # appends go on right after the cut
        after = settle(client)
    server.stop()

    assert report in server.stderr(), server.stderr()
    logged = read_log(base)
    assert logged == kept + later
    assert status.counts_digest == batch_digest(kept)
    assert after.counts_digest == batch_digest(logged)


def test_a_damaged_older_segment_stops_the_start(pristine, tmp_path, servers):
    """Only the last segment can end in a torn write; damage anywhere else needs an operator:
    the process exits non-zero naming the segment, and leaves the log as it found it."""
    base, before = copy_of(pristine, tmp_path)
    shutil.rmtree(base / "data" / "events")
    with LocalEventLog(base / "data" / "events", segment_bytes=4096) as log:  # the same log in segments
        for start in range(0, len(before), BATCH):
            log.append(before[start:start + BATCH])
    first, *rest = segments(base)
    assert rest, "the log has one segment only"
    pos = record_starts(first)[3]
    flip_byte(first, pos + RECORD_HEADER.size + 3)
    files = {path: path.read_bytes() for path in segments(base)}

    server = servers(base, "restart")
    assert server.proc.wait(timeout=60) == 2
    assert (f"covisit serve: {first}: CRC mismatch at byte {pos} of a segment that is not the last, so it is not"
            " a torn write") in server.stderr(), server.stderr()
    assert {path: path.read_bytes() for path in segments(base)} == files  # nothing was cut


def test_a_damaged_record_a_checkpoint_covers_leaves_model_and_log_equal(tmp_path, servers):
    """The first start checkpoints the seeded log; flip a byte in its last record (bit rot):
    the log cuts that record, and the model must not keep counting it."""
    seeded = write_events(tmp_path / "events.csv")
    server = servers(tmp_path, "first")
    server.wait_serving()
    server.stop()
    flipped_payload_byte(segments(tmp_path)[-1])

    server = servers(tmp_path, "restart")
    server.wait_serving()
    with server.client() as client:
        assert client.get_status().log_events == seeded - 1
        send(client, batch_of("later"))
        status = settle(client)
    server.stop()
    assert status.counts_digest == batch_digest(read_log(tmp_path))

"""`make cluster-demo`: three covisit replicas on a 3-node NATS JetStream cluster learn the same
counts.

Starts a real 3-node JetStream cluster (`nats_cluster.NatsCluster`: `nats-server` processes on
127.0.0.1 ports, each with its own store dir) and three `covisit serve` replicas (r1, r2, r3, a
free 127.0.0.1 port each) sharing one stream with three copies (R3). The data file's events,
in time order, reach the stream two ways:

- all but the last --live-events are seeded: the demo writes them to a generic events file and
  every replica is started with it as --data; replicas starting together append it once
  between them (the fast path, 10,000 events per append);
- the last --live-events are then sent by RecordEvents, batches of --batch events handed to
  r1, r2, r3 in turn (the live path: each replica acknowledges what JetStream stored, and every
  replica learns every batch, whichever took it).

Once each replica has learned the whole stream (events == log_events == every event sent,
nothing pending) it prints one line per replica:

    replica <name> model_hash <sha256 of its exact counts> serving_version <the fleet's line>

(the serving version is the line every replica serves, the leader's last full build; each
replica's incremental updates on top of it have numbers of their own). Then a fourth replica,
r4, starts with an empty data dir: it fetches the line's checkpoint from the object store,
replays the stream after it, and the demo prints how soon it served. Last, the stream's make-up
and how long each step took (seconds). Every process it started is stopped however it ends
(also on an error, a timeout or Ctrl-C); every wait is bounded. Exit status 0 only if all the
hashes (r4's too) and serving versions agree, 1 otherwise. Only loopback addresses are used. Run: `make cluster-demo`, or
`.venv/bin/python loadtest/cluster_demo.py [--data FILE --preset NAME]`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import grpc
import nats

# sibling scripts: loadtest/ is this script's sys.path[0]
from bench_grpc import DATA, HOST, Server
from covisit.client import CovisitClient
from covisit.client import Event as WireEvent
from covisit.core.datasets import read_events_file, read_preset
from covisit.core.events import Event
from nats_cluster import NatsCluster

NAMES = ("r1", "r2", "r3")
LATE = "r4"  # the replica that starts once the others have learned everything
STREAM = "COVISIT_DEMO"
POLL_SECONDS = 0.5
PROGRESS_SECONDS = 5.0  # how often the wait shows where the replicas are (stderr)
CALL_SECONDS = 60.0  # per gRPC call: a counts digest of the full model takes a moment


class Replica(Server):
    """`covisit serve` on the shared JetStream stream (R3), seeding it from `data` if it is empty."""

    def __init__(self, name: str, directory: Path, nats_urls: list[str], data: Path):
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory / "data", directory / "serve.log", {"COVISIT_SERVER_EVENT_LOG_STREAM": STREAM})
        self.name, self.nats_urls, self.data = name, nats_urls, data

    def command(self) -> list[str]:
        return [sys.executable, "-m", "covisit.server.cli", "serve", *self.flags("", str(self.data)),
                "--no-metrics", "--event-log", ",".join(self.nats_urls), "--event-log-replicas", "3",
                "--replica-name", self.name]

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


def read_events(path: Path, preset: str) -> list[Event]:
    """The file's events in the order a replica seeds them (by time, stable)."""
    report = read_preset(preset, path) if preset else read_events_file(path)
    return sorted(report.events, key=lambda e: e.timestamp)


def write_events(path: Path, events: list[Event]) -> None:
    """A generic events CSV (timestamps as exact float text, so they read back unchanged)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "event_type", "timestamp", "session_id"])
        for e in events:
            w.writerow([e.user_id, e.item_id, e.event_type, repr(e.timestamp), e.session_id or ""])


def send_round_robin(replicas: list[Replica], events: list[Event], batch: int, timeout: float) -> None:
    """RecordEvents: batch i goes to replica i mod len(replicas); each call returns once
    JetStream has acknowledged the batch. All of it within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    clients = [CovisitClient(r.address) for r in replicas]
    try:
        for i, start in enumerate(range(0, len(events), batch)):
            chunk = [WireEvent(e.user_id, e.item_id, e.event_type, e.timestamp, e.session_id)
                     for e in events[start:start + batch]]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"only {start} of {len(events)} live events acknowledged in {timeout:.0f}s")
            accepted = clients[i % len(clients)].record_events(chunk, timeout=min(left, CALL_SECONDS))
            if accepted != len(chunk):
                raise RuntimeError(f"{replicas[i % len(replicas)].name} accepted {accepted} of {len(chunk)} events")
    finally:
        for c in clients:
            c.close()


def wait_seeded(cluster: NatsCluster, replicas: list[Replica], count: int, deadline: float) -> None:
    """Until the stream holds the `count` seed events (whichever replicas appended them)."""
    while True:
        if all(r.proc.poll() is not None for r in replicas):
            raise RuntimeError(f"every replica exited while seeding; {replicas[0].name}'s log:\n"
                               f"{replicas[0].log_tail()}")
        try:
            if cluster.stream_info(STREAM).state.messages >= count:
                return
        except (nats.errors.Error, asyncio.TimeoutError):
            pass  # no stream yet, or a node busy: ask again
        if time.monotonic() > deadline:
            raise TimeoutError(f"the stream did not hold the {count} seed events in time")
        time.sleep(POLL_SECONDS)


def caught_up(status, total: int) -> bool:
    """A replica has learned the whole stream of `total` events."""
    return status.log_events == total and status.events == total and status.events_pending == 0


def wait_caught_up(replicas: list[Replica], total: int, timeout: float) -> dict[str, object]:
    """Poll GetStatus until every replica has caught up; returns their statuses with the counts
    digest. Raises TimeoutError (with the last statuses) after `timeout` seconds, RuntimeError
    if a replica exits."""
    deadline = time.monotonic() + timeout
    clients = {r.name: CovisitClient(r.address, timeout=CALL_SECONDS) for r in replicas}
    last: dict[str, str] = {}
    shown = time.monotonic()
    try:
        while True:
            for r in replicas:
                if r.proc.poll() is not None:
                    raise RuntimeError(f"replica {r.name} exited with {r.proc.returncode}:\n{r.log_tail()}")
            try:
                statuses = {name: c.get_status() for name, c in clients.items()}
                last = {name: f"events {s.events} log_events {s.log_events} pending {s.events_pending} "
                              f"learning {s.learning}" for name, s in statuses.items()}
                if all(caught_up(s, total) for s in statuses.values()):
                    return {name: c.get_status(counts_digest=True) for name, c in clients.items()}
            except grpc.RpcError as exc:
                last = {"error": f"{exc.code()}: {exc.details()}"}
            if time.monotonic() - shown > PROGRESS_SECONDS:
                print(f"catching up: {last}", file=sys.stderr, flush=True)
                shown = time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas not caught up with {total} events after {timeout:.0f}s: {last}")
            time.sleep(POLL_SECONDS)
    finally:
        for c in clients.values():
            c.close()


def judge(hashes: dict[str, str], what: str = "model hash") -> list[str]:
    """What is wrong with the replicas' `what`s ([] when there are some and all agree)."""
    if not hashes:
        return [f"no replica reported a {what}"]
    problems = [f"replica {name} reported no {what}" for name, h in hashes.items() if not h]
    if len(set(hashes.values())) > 1:
        groups: dict[str, list[str]] = {}
        for name, h in hashes.items():
            groups.setdefault(h, []).append(name)
        problems.append(f"replicas disagree on the {what}: " + "; ".join(
            f"{', '.join(names)} {h[:12] or '-'}" for h, names in groups.items()))
    return problems


def bootstrap(late: Replica, total: int, timeout: float) -> tuple[str, object]:
    """Start `late` on the full stream with an empty data dir; the line saying how soon it
    served and from which checkpoint, and its status (with the counts digest) once caught up."""
    late.start()
    seconds = late.wait_serving(timeout)
    fetched = sorted(late.data_dir.glob("checkpoints/v*/checkpoint.json"))
    if not fetched:
        raise RuntimeError(f"replica {late.name} fetched no checkpoint from the object store")
    info = json.loads(fetched[-1].read_text())
    status = wait_caught_up([late], total, timeout)[late.name]
    line = (f"bootstrap: replica {late.name} SERVING {seconds:.1f} s after its start, from checkpoint "
            f"v{info['version']} (fetched from the object store, {info['event_watermark']} events) plus "
            f"{total - info['event_watermark']} events replayed from the stream")
    return line, status


def run(args, work: Path) -> int:
    started = time.monotonic()
    events = read_events(Path(args.data), args.preset)
    live = min(args.live_events, len(events))
    seed, tail = events[:len(events) - live], events[len(events) - live:]
    seed_file = work / "seed.csv"
    write_events(seed_file, seed)
    t_read = time.monotonic()
    print(f"{args.data}: {len(events)} events; {len(seed)} seed the stream, {len(tail)} go through RecordEvents",
          file=sys.stderr, flush=True)
    cluster = NatsCluster(work / "nats")
    replicas: list[Replica] = []
    try:
        cluster.start()
        replicas += [Replica(name, work / name, cluster.urls, seed_file) for name in NAMES]
        t_nats = time.monotonic()
        print(f"NATS cluster ready: {', '.join(cluster.urls)}", file=sys.stderr, flush=True)
        for r in replicas:  # together: they seed the stream once between them
            r.start()
        if seed:
            wait_seeded(cluster, replicas, len(seed), t_nats + args.timeout)
        t_seeded = time.monotonic()
        for r in replicas:  # then each replays the stream, and serves once it has learned it
            r.wait_serving(max(1.0, t_nats + args.timeout - time.monotonic()))
        t_serving = time.monotonic()
        print("replicas SERVING: " + ", ".join(f"{r.name} {r.address}" for r in replicas), file=sys.stderr, flush=True)
        send_round_robin(replicas, tail, args.batch, args.timeout)
        t_sent = time.monotonic()
        statuses = wait_caught_up(replicas, len(events), args.timeout)
        t_caught_up = time.monotonic()
        late = Replica(LATE, work / LATE, cluster.urls, seed_file)
        replicas.append(late)
        booted, statuses[LATE] = bootstrap(late, len(events), args.timeout)
    finally:
        for r in replicas:  # all at once, then each waited for (killed after a grace period)
            if r.proc is not None and r.proc.poll() is None:
                r.proc.terminate()
        for r in replicas:
            r.stop()
        cluster.stop()
    summary = (f"stream: {len(events)} events: {len(seed)} seeded from {Path(args.data).name}, {len(tail)} "
               f"recorded live (RecordEvents round-robin, batches of {args.batch})\n"
               f"seconds: data read {t_read - started:.1f}, NATS ready +{t_nats - t_read:.1f}, stream seeded "
               f"+{t_seeded - t_nats:.1f}, replicas serving +{t_serving - t_seeded:.1f}, live events acknowledged "
               f"+{t_sent - t_serving:.1f}, all caught up +{t_caught_up - t_sent:.1f}, {LATE} caught up "
               f"+{time.monotonic() - t_caught_up:.1f}; "
               f"{time.monotonic() - started:.1f} in all")
    return report(statuses, f"{booted}\n{summary}")


def report(statuses: dict[str, object], summary: str) -> int:
    """Print a line per replica of the first three and the summary (stdout), what is wrong
    (stderr); the exit status."""
    for name, s in statuses.items():
        if name != LATE:
            print(f"replica {name} model_hash {s.counts_digest} serving_version {s.model_line}")
    print(summary)
    problems = (judge({name: s.counts_digest for name, s in statuses.items()})
                + judge({name: s.model_line for name, s in statuses.items()}, "serving version"))
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA), help="events to replay (default: the bundled online-retail log)")
    parser.add_argument("--preset", default="online-retail",
                        help="the data file's preset ('' for a generic events file)")
    parser.add_argument("--live-events", type=int, default=10_000,
                        help="the newest events, sent by RecordEvents round-robin instead of seeded")
    parser.add_argument("--batch", type=int, default=500, help="events per RecordEvents call")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="bound (seconds) on each step: replicas SERVING, live events sent, all caught up")
    parser.add_argument("--work-dir", help="keep the NATS stores and replica logs here (default: a temporary dir)")
    args = parser.parse_args()
    if args.batch < 1 or args.live_events < 0:
        parser.error("--batch must be >= 1 and --live-events >= 0")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # runs the finally: stops all
    try:
        if args.work_dir:
            Path(args.work_dir).mkdir(parents=True, exist_ok=True)
            return run(args, Path(args.work_dir))
        with tempfile.TemporaryDirectory(prefix="covisit-cluster-demo-") as tmp:
            return run(args, Path(tmp))
    except (RuntimeError, TimeoutError, OSError, ValueError, grpc.RpcError) as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process stopped", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

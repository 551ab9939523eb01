"""Freshness benchmark: how soon a recorded event shows in recommendations, and what continuous
learning costs the requests served meanwhile.

Each scenario runs the real server (`covisit serve` in its own process, on a free 127.0.0.1
port, from a fresh temporary data directory) and the real CovisitClient:

- bundled: the online-retail log, seeded and built on first start (~530k events, ~4k items;
  not timed); the traffic replays its invoices as new sessions (fresh user and session ids,
  current timestamps), a few dozen sessions interleaved;
- large: a synthetic 1M-item model (~50M exact links, server default model settings) built
  here from a seeded Zipf log and written as the checkpoint the server loads at start; the
  traffic is Zipf-popular existing items.

In each scenario, after untimed warm-up requests:

1. idle: sequential RecommendItems (paced, one in flight) with contexts of 1-10 known items,
   from a reader in a process of its own (as a separate client service would call);
2. first event: one probe (below) alone, timed from its acknowledgement (with so few events
   pending the learner waits learning.max_delay_seconds before it publishes);
3. warm-up stream, reported apart: the stream below until the learner has published
   KEPT_VERSIONS + 2 versions (at least 3 s). The first publish after a start copies the
   loaded checkpoint's rows into a pool with room for later ones, so on the large model the
   first publishes touch fresh memory and are slower than the steady state;
4. sustained stream, the figures against the targets: a writer sends RecordEvents at a steady
   rate (default 1,000 events/s: 10 events every 10 ms on a monotonic clock; a slow call delays
   the next ones, which then go back to back until on time). Every 10th call (~100 ms) also
   carries a probe: a new session of two brand-new items P -> Q. Once that call returns (the
   acknowledgement), a prober polls RecommendItems(context_items=[P], k=10) every few ms until Q
   appears: freshness is the time from the acknowledgement to that first response. The log is
   learned in order, so only the oldest unanswered probe is polled. The idle reader runs again
   meanwhile, for Recommend latency during continuous building;
5. idle again. The idle reference is both idle runs pooled (this VM's p99 moves between runs).

Exploration and the response cache are off, so every request scores the serving snapshot. The
server logs each publish (the learner's and the model's debug lines, stamped with Unix time),
which gives the publish interval and the snapshot time of every version during the stream.

Prints one JSON object per figure, then a table beside the targets, and writes all results to
build/bench/freshness.json. Only loopback is ever contacted; every loop is bounded in count and
in time; servers are stopped however the run ends. Run: `make bench`.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import queue
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

# sibling scripts: loadtest/ is this script's sys.path[0]
from bench_core import cpu_model, new_model
from bench_grpc import DATA, HOST, ROOT, Server, cut_contexts, emit, percentiles_ms
from covisit.client import CovisitClient, Event
from covisit.core.checkpoints import CheckpointStore
from covisit.core.config import ModelConfig
from covisit.core.datasets import read_online_retail
from covisit.core.interning import IdMap
from covisit.core.learner import KEPT_VERSIONS
from covisit.core.synthetic import zipf_log

K = 10
OUT = ROOT / "build" / "bench" / "freshness.json"
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")  # synthetic weights 1..4
TARGET_P95_MS = {"bundled": 1000.0, "large": 2000.0}
TARGET_RATIO = 2.0
# Logging is set up before the CLI's own basicConfig (which then leaves it alone), so that the
# learner's and the model's debug lines (one per publish) reach the server log.
BOOT = """\
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(created).3f %(levelname)s %(name)s: %(message)s")
for name in ("covisit.core.model", "covisit.core.learner"):
    logging.getLogger(name).setLevel(logging.DEBUG)
from covisit.server.cli import main
sys.exit(main(sys.argv[1:]))
"""
SNAPSHOT_LINE = re.compile(r"^(\d+\.\d+) DEBUG covisit\.core\.model: (full|incremental) snapshot v(\d+): "
                           r"(\d+) items, (\d+) rows pruned, (\d+) links in ([\d.]+)s")
SERVING_LINE = re.compile(r"^(\d+\.\d+) DEBUG covisit\.core\.learner: serving v(\d+) ")


class BenchServer(Server):
    """bench_grpc's server with this benchmark's data and preset ("" for none) and its logging."""

    def __init__(self, data_dir: Path, log_path: Path, env: dict[str, str], data: str, preset: str):
        super().__init__(data_dir, log_path, env)
        self.data, self.preset = data, preset

    def command(self) -> list[str]:
        return [sys.executable, "-c", BOOT, "serve", *self.flags(self.preset, self.data)]

    def memory(self) -> dict[str, int]:
        """The server process's resident and peak resident bytes (empty if unreadable)."""
        out = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        name = "rss_bytes" if line.startswith("VmRSS") else "peak_rss_bytes"
                        out[name] = int(line.split()[1]) * 1024
        except (OSError, AttributeError):
            pass
        return out


@dataclass
class Traffic:
    stream: list[tuple[int, str, str]]  # (session number, item id, event type), in send order
    contexts: list[list[str]]  # reader contexts: 1-10 known items, newest last


@dataclass
class Probe:
    index: int
    first: str  # P: the context the prober asks with
    second: str  # Q: the item that must appear
    acked_ns: int = 0  # perf_counter_ns when RecordEvents returned
    seen_ns: int = 0  # perf_counter_ns of the first response holding Q (0: never)
    polls: int = 0
    version: str = ""  # the model version of that response


def interleave(sessions: list[list[str]], n_events: int, rng: random.Random, event_type: str,
               active: int = 32) -> list[tuple[int, str, str]]:
    """`n_events` events from `sessions` (cycled; each use is a new session number), `active`
    sessions open at a time, the next event from a random open one."""
    out: list[tuple[int, str, str]] = []
    open_: list[list] = []  # [session number, items, next position]
    started = 0
    while len(out) < n_events:
        while len(open_) < active:
            open_.append([started, sessions[started % len(sessions)], 0])
            started += 1
        slot = rng.randrange(len(open_))
        s = open_[slot]
        out.append((s[0], s[1][s[2]], event_type))
        s[2] += 1
        if s[2] == len(s[1]):
            open_[slot] = open_[-1]
            open_.pop()
    return out


def bundled_traffic(n_events: int, n_contexts: int, seed: int) -> Traffic:
    report = read_online_retail(DATA)
    by_invoice: dict[str, list[str]] = defaultdict(list)
    for ev in report.events:
        by_invoice[ev.session_id].append(ev.item_id)
    invoices = [items for items in by_invoice.values() if items]
    del report, by_invoice
    rng = random.Random(seed)
    rng.shuffle(invoices)
    contexts = cut_contexts(invoices, n_contexts, rng)
    return Traffic(interleave(invoices, n_events, rng, "purchase"), contexts)


def zipf_traffic(n_events: int, n_items: int, n_contexts: int, seconds: float, seed: int) -> Traffic:
    """Zipf-popular existing items (the large model's own distribution), sessions interleaved
    in time as zipf_log makes them, over `seconds`."""
    log = zipf_log(n_events, n_items, seed=seed, exponent=0.8, locality=0.0, span_seconds=seconds)
    stream = [(int(s), str(i), EVENT_TYPES[int(w) - 1])
              for s, i, w in zip(log.seqs.tolist(), log.items.tolist(), log.weights.tolist())]
    sessions: dict[int, list[str]] = defaultdict(list)
    ctx_log = zipf_log(max(20 * n_contexts, 1000), n_items, seed=seed + 1, exponent=0.8, locality=0.0)
    for s, i in zip(ctx_log.seqs.tolist(), ctx_log.items.tolist()):
        sessions[s].append(str(i))
    rng = random.Random(seed)
    ordered = list(sessions.values())
    rng.shuffle(ordered)
    return Traffic(stream, cut_contexts(ordered, n_contexts, rng))


def build_large(data_dir: Path, n_items: int, n_events: int, seed: int) -> dict:
    """A 1M-item model (server default settings) from a Zipf log, saved as the checkpoint a
    server loads at start: version 1, serving, at log offset 0 (its log is empty)."""
    started = time.perf_counter()
    log = zipf_log(n_events, n_items, seed=seed, exponent=0.8, locality=0.0)
    log_seconds = time.perf_counter() - started
    config = ModelConfig()
    model = new_model(config, n_items)
    # Named sequences: sessions the server interns later get new ids, not these ones' history.
    model.sequences = IdMap(f"s:bench-{s}" for s in range(int(log.seqs.max()) + 1))
    t0 = time.perf_counter()
    model.update_encoded(log.seqs, log.items, log.weights, log.times)
    build_seconds = time.perf_counter() - t0
    del log
    t0 = time.perf_counter()
    snap = model.snapshot(version=1)
    snapshot_seconds = time.perf_counter() - t0
    snap.meta["log_offset"] = 0  # what the server's empty log holds: nothing to replay or re-prune
    snap.meta["line"] = 1
    t0 = time.perf_counter()
    CheckpointStore(data_dir / "checkpoints").save(snap, model, watermark=0, state="SERVING",
                                                   metrics={"items": snap.n_items, "links": snap.n_links})
    row = {"bench": "large_model", "items": snap.n_items, "events": n_events, "exact_links": model.n_links,
           "serving_links": snap.n_links, "window": config.window, "backward": config.backward,
           "top_n": config.top_n, "log_seconds": log_seconds, "build_seconds": build_seconds,
           "snapshot_seconds": snapshot_seconds, "save_seconds": time.perf_counter() - t0,
           "total_seconds": time.perf_counter() - started}
    del model, snap
    gc.collect()
    return row


def new_client(port: int) -> CovisitClient:
    # a connection of its own per thread (no subchannel shared with the other threads' clients)
    return CovisitClient(f"{HOST}:{port}", timeout=5.0, options=[("grpc.use_local_subchannel_pool", 1)])


def read_paced(client: CovisitClient, contexts: list[list[str]], n: int, interval: float,
               stop: threading.Event | None, seconds: float, offset: int = 0) -> np.ndarray:
    """Up to `n` sequential RecommendItems, one every `interval` seconds (or back to back when a
    call takes longer), until `stop` is set or `seconds` pass; returns their latencies (ns)."""
    ns = []
    started = time.perf_counter()
    deadline = started + seconds
    for q in range(n):
        due = started + q * interval
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        if (stop is not None and stop.is_set()) or time.perf_counter() > deadline:
            break
        t0 = time.perf_counter_ns()
        client.recommend_items(contexts[(offset + q) % len(contexts)], k=K)
        ns.append(time.perf_counter_ns() - t0)
    return np.array(ns, np.int64)


_reader: dict = {}  # the reader process's client, contexts and stop event


def _reader_start(port: int, contexts: list[list[str]], stop) -> None:
    _reader.update(client=new_client(port), contexts=contexts, stop=stop)


def _reader_run(n: int, interval: float, seconds: float, offset: int, stoppable: bool) -> np.ndarray:
    return read_paced(_reader["client"], _reader["contexts"], n, interval,
                      _reader["stop"] if stoppable else None, seconds, offset)


class Reader:
    """The paced reader in a process of its own, as a separate client service would call: its
    latencies then include no wait for the bench's own GIL, which the writer, the prober and the
    monitor hold in turns (in one process with them, the reader's p99 grew with the stream's
    client work as well as with the server's)."""

    def __init__(self, port: int, contexts: list[list[str]]):
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding gRPC channels
        self.stop = ctx.Event()
        self._pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=_reader_start,
                                         initargs=(port, contexts, self.stop))

    def read(self, n: int, interval: float, seconds: float, offset: int = 0, stoppable: bool = False) -> np.ndarray:
        """read_paced in the reader process; with `stoppable`, until `self.stop` is set."""
        return self._pool.submit(_reader_run, n, interval, seconds, offset, stoppable).result()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(cancel_futures=True)


def probe_events(tag: str, probe: Probe, timestamp: float) -> list[Event]:
    session, user = f"{tag}-probe-{probe.index}", f"{tag}-probe-user-{probe.index}"
    return [Event(user, probe.first, "view", timestamp, session),
            Event(user, probe.second, "view", timestamp, session)]


def new_probe(tag: str, index: int) -> Probe:
    return Probe(index, f"{tag}-p{index}", f"{tag}-q{index}")


def reflects(client: CovisitClient, probe: Probe) -> bool:
    rec = client.recommend_items([probe.first], k=K)
    probe.polls += 1
    if any(item.item_id == probe.second for item in rec.items):
        probe.seen_ns = time.perf_counter_ns()
        probe.version = rec.model_version
        return True
    return False


def first_event(client: CovisitClient, tag: str, poll: float, timeout: float) -> dict:
    """One probe alone: seconds from its acknowledgement to the first response reflecting it."""
    probe = new_probe(tag + "-first", 0)
    client.record_events(probe_events(tag + "-first", probe, time.time()))
    probe.acked_ns = time.perf_counter_ns()
    deadline = time.perf_counter() + timeout
    while not reflects(client, probe):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the first event was not reflected within {timeout:.0f}s")
        time.sleep(poll)
    return {"seconds": (probe.seen_ns - probe.acked_ns) / 1e9, "polls": probe.polls, "version": probe.version}


def write_stream(client: CovisitClient, traffic: Traffic, tag: str, args, seconds: float,
                 probes: queue.Queue, enough: threading.Event) -> dict:
    """RecordEvents of `args.per_call` events every per_call/rate seconds for `seconds` (or until
    `args.probe_every` calls after `enough` is set); every `args.probe_every`-th call carries a
    probe, handed to the prober once acknowledged. A slow call delays the next ones, which then
    go back to back until on time."""
    interval = args.per_call / args.rate
    calls = round(seconds / interval)
    stream = traffic.stream
    pos = sent = n_probes = 0
    record_ns = []
    behind = 0.0
    started = time.perf_counter()
    deadline = started + 2 * seconds + 10  # a server that cannot keep up ends the run
    last = calls  # no probe in the last probe_every calls: a probe's events are followed by more
    for call in range(calls):
        due = started + call * interval
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        else:
            behind = max(behind, now - due)
        if enough.is_set() and last == calls:
            last = min(calls, call + args.probe_every)
        if call >= last or now > deadline:
            break
        timestamp = time.time()
        batch = []
        probe = None
        if call % args.probe_every == 0 and call < last - args.probe_every:
            probe = new_probe(tag, n_probes)
            n_probes += 1
            batch += probe_events(tag, probe, timestamp)
        while len(batch) < args.per_call:
            session, item, event_type = stream[pos % len(stream)]
            pos += 1
            batch.append(Event(f"{tag}-u{session}", item, event_type, timestamp, f"{tag}-s{session}"))
        t0 = time.perf_counter_ns()
        client.record_events(batch)
        acked = time.perf_counter_ns()
        record_ns.append(acked - t0)
        sent += len(batch)
        if probe is not None:
            probe.acked_ns = acked
            probes.put(probe)
    seconds = time.perf_counter() - started
    ns = np.array(record_ns, np.int64)
    return {"calls": len(ns), "events": sent, "probes": n_probes, "seconds": seconds,
            "events_per_s": sent / seconds, "max_behind_schedule_ms": behind * 1e3,
            **{f"record_{k}": v for k, v in percentiles_ms(ns).items()}}


def prober(client: CovisitClient, probes: queue.Queue, writer_done: threading.Event, abort: threading.Event,
           poll: float, timeout: float, seconds: float) -> list[Probe]:
    """Poll the oldest unanswered probe until it is reflected (or `timeout` passes); the log is
    learned in order, so a younger probe cannot be reflected before it."""
    waiting: deque[Probe] = deque()
    done: list[Probe] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and not abort.is_set():
        try:
            while True:
                waiting.append(probes.get_nowait())
        except queue.Empty:
            pass
        if not waiting:
            if writer_done.is_set() and probes.empty():
                break
            try:
                waiting.append(probes.get(timeout=0.05))
            except queue.Empty:
                pass
            continue
        probe = waiting[0]
        if reflects(client, probe):
            done.append(waiting.popleft())
            continue  # the next one may be in the same version: ask at once
        if time.perf_counter_ns() - probe.acked_ns > timeout * 1e9:
            done.append(waiting.popleft())  # seen_ns stays 0: not reflected in time
            continue
        time.sleep(poll)
    return done + list(waiting)


def monitor(client: CovisitClient, writer_done: threading.Event, every: float, seconds: float,
            until=None, enough: threading.Event | None = None) -> list[tuple[float, int, int]]:
    """(seconds since start, events pending, publishes) every `every` seconds while the writer
    runs; sets `enough` once `until(publishes)` holds."""
    samples = []
    started = time.perf_counter()
    while not writer_done.wait(every) and time.perf_counter() - started < seconds:
        publishes = client.get_metrics().publishes
        samples.append((time.perf_counter() - started, client.get_status().events_pending, publishes))
        if until is not None and until(publishes):
            enough.set()
    return samples


def run_threads(targets: dict[str, callable], seconds: float) -> dict:
    """Run each target in a thread; re-raise the first error; returns their results by name."""
    results: dict = {}
    errors: list[BaseException] = []

    def wrap(name, target):
        try:
            results[name] = target()
        except BaseException as exc:  # noqa: BLE001 - raised again by the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=item, name=f"bench-{item[0]}", daemon=True)
               for item in targets.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds)
    if errors:
        raise errors[0]
    missing = [t.name for t in threads if t.is_alive()]
    if missing:
        raise TimeoutError(f"threads still running after {seconds:.0f}s: {missing}")
    return results


def learner_timeline(log_path: Path, t0: float, t1: float) -> dict:
    """Publishes between Unix times t0 and t1 from the server log: their intervals, and the
    snapshot time and re-pruned rows of each."""
    snaps: dict[int, tuple[str, int, int, float]] = {}
    served: list[tuple[float, int]] = []
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        if m := SNAPSHOT_LINE.match(line):
            snaps[int(m[3])] = (m[2], int(m[5]), int(m[6]), float(m[7]))
        elif m := SERVING_LINE.match(line):
            served.append((float(m[1]), int(m[2])))
    inside = [(t, v) for t, v in served if t0 <= t <= t1]
    if not inside:
        return {"publishes": 0}
    intervals = np.diff([t for t, _ in inside])  # between publishes of the window only
    built = [snaps[v] for _, v in inside if v in snaps]
    snap_s = np.array([b[3] for b in built]) if built else np.zeros(1)
    rows = np.array([b[1] for b in built]) if built else np.zeros(1)
    out = {"publishes": len(inside), "publishes_per_s": len(inside) / max(t1 - t0, 1e-9),
           "full_snapshots": sum(b[0] == "full" for b in built),
           "snapshot_p50_s": float(np.median(snap_s)), "snapshot_p95_s": float(np.percentile(snap_s, 95)),
           "snapshot_max_s": float(snap_s.max()), "rows_repruned_p50": float(np.median(rows)),
           "rows_repruned_max": int(rows.max()), "serving_links": built[-1][2] if built else 0}
    if len(intervals):
        out |= {"interval_p50_s": float(np.median(intervals)), "interval_p95_s": float(np.percentile(intervals, 95)),
                "interval_max_s": float(intervals.max())}
        paired = [(iv, snaps[v][3]) for iv, (_, v) in zip(intervals, inside[-len(intervals):]) if v in snaps]
        if paired:  # the rest of a step: reading the log, counting the events, publishing
            rest = np.array([iv - s for iv, s in paired])
            out["rest_of_interval_p50_s"] = float(np.median(rest))
    return out


def stream_phase(port: int, reader: Reader, traffic: Traffic, tag: str, args, seconds: float, log_path: Path,
                 until=None, probing: bool = True) -> dict:
    """The writer, the prober, the paced reader and a monitor at once, for `seconds` (or until
    `until(publishes)` holds, checked every 0.5 s); returns what each measured. Without
    `probing` the writer sends no probes and no prober polls: the reader then sees the cost of
    building alone, not of the prober's own requests."""
    if not probing:
        args = argparse.Namespace(**{**vars(args), "probe_every": 10**9})
    probes: queue.Queue = queue.Queue()
    writer_done, enough, abort = threading.Event(), threading.Event(), threading.Event()
    reader.stop.clear()
    limit = 2 * seconds + args.probe_timeout + 30
    interval = args.read_interval_ms / 1e3
    clients = [new_client(port) for _ in range(3)]
    try:
        def write() -> dict:
            try:
                return write_stream(clients[0], traffic, tag, args, seconds, probes, enough)
            finally:
                writer_done.set()
                reader.stop.set()

        before = clients[2].get_metrics()
        wall0 = time.time()
        got = run_threads({
            "writer": write,
            **({"prober": lambda: prober(clients[1], probes, writer_done, abort, args.poll_ms / 1e3,
                                         args.probe_timeout, limit)} if probing else {}),
            "reader": lambda: reader.read(int(2 * seconds / interval) + 10, interval, limit, stoppable=True),
            "monitor": lambda: monitor(clients[2], writer_done, 0.5, limit, until, enough),
        }, limit + 10)
        wall1 = time.time()
        after = clients[2].get_metrics()
    finally:
        abort.set()
        writer_done.set()
        reader.stop.set()
        for c in clients:
            c.close()
    return {**got, "before": before, "after": after,
            "timeline": learner_timeline(log_path, wall0, wall1)}


def summarise(name: str, phase: str, got: dict, idle_p99_ms: float, args, results: list) -> dict:
    """The rows of one stream phase: writer, freshness, Recommend while busy, learner."""
    out = {}
    common = {"scenario": name, "phase": phase}
    out["writer"] = {"bench": "record_stream", **common, "rate": args.rate, "per_call": args.per_call,
                     **got["writer"]}
    emit(results, out["writer"])
    done = got["prober"]
    seen = np.array([p.seen_ns - p.acked_ns for p in done if p.seen_ns], np.int64)
    out["freshness"] = {"bench": "freshness", **common, "probes": len(done), "reflected": len(seen),
                        "not_reflected": len(done) - len(seen),
                        "mean_polls": float(np.mean([p.polls for p in done])) if done else 0.0,
                        **(percentiles_ms(seen) if len(seen) else {}), "target_p95_ms": TARGET_P95_MS[name]}
    emit(results, out["freshness"])
    busy, before, after = got["reader"], got["before"], got["after"]
    out["busy"] = {"bench": "recommend_busy", **common, "requests": len(busy),
                   "interval_ms": args.read_interval_ms, **percentiles_ms(busy),
                   "server_p50_ms": after.latency_p50_ms, "server_p99_ms": after.latency_p99_ms,
                   "server_recommend_requests": after.recommend_requests - before.recommend_requests,
                   "p99_ratio_busy_idle": float(np.percentile(busy, 99) / 1e6 / idle_p99_ms),
                   "target_ratio": TARGET_RATIO}
    emit(results, out["busy"])
    pending = [n for _, n, _ in got["monitor"]]
    out["learner"] = {"bench": "learner_during_stream", **common,
                      "publishes_getmetrics": after.publishes - before.publishes,
                      "events_pending_max": max(pending, default=0),
                      "events_pending_mean": float(np.mean(pending)) if pending else 0.0, **got["timeline"]}
    emit(results, out["learner"])
    return out


def idle_reads(client: CovisitClient, reader: Reader, args, offset: int) -> tuple[np.ndarray, dict]:
    ns = reader.read(args.idle_requests, args.read_interval_ms / 1e3, 120.0, offset)
    m = client.get_metrics()
    return ns, {"requests": len(ns), **percentiles_ms(ns), "server_p50_ms": m.latency_p50_ms,
                "server_p99_ms": m.latency_p99_ms}


def run_scenario(name: str, server: BenchServer, traffic_for, args, results: list) -> dict:
    """Start the server; idle reads, the first event, a warm-up stream, the measured stream and
    idle reads again; stop it."""
    out: dict = {"scenario": name}
    tag = f"{name}-{os.getpid()}"  # unique item and session ids for this run
    server.start()
    traffic = traffic_for()  # made while the server loads
    startup = server.wait_serving(args.startup_timeout)
    with new_client(server.port) as client, Reader(server.port, traffic.contexts) as reader:
        status = client.get_status()
        out["start"] = {"bench": "freshness_start", "scenario": name, "seconds_to_serving": startup,
                        "model_version": status.model_version, "items": status.items, "links": status.links,
                        **server.memory()}
        emit(results, out["start"])
        reader.read(args.warmup, 0.0, 120.0)
        idle_before, out["idle_before"] = idle_reads(client, reader, args, args.warmup)
        emit(results, {"bench": "recommend_idle", "scenario": name, "when": "before", **out["idle_before"]})

        wall = time.time()
        out["first"] = {"bench": "first_event", "scenario": name,
                        **first_event(client, tag, args.poll_ms / 1e3, args.first_timeout)}
        out["first"]["learner"] = learner_timeline(server.log_path, wall, time.time() + 1.0)
        emit(results, out["first"])

        # Warm-up: until the learner keeps its full set of recent versions (the first publish
        # after a start copies the rows into a new pool), at least 3 s.
        start_publishes, warm_start = client.get_metrics().publishes, time.perf_counter()
        warm = stream_phase(server.port, reader, traffic, tag + "-w", args, args.warmup_max_seconds, server.log_path,
                            until=lambda p: (p - start_publishes >= KEPT_VERSIONS + 2
                                             and time.perf_counter() - warm_start >= 3.0))
        time.sleep(1.0)  # let the learner catch up
        idle_p99_before = out["idle_before"]["p99_ms"]
        out["warmup_stream"] = summarise(name, "warm-up", warm, idle_p99_before, args, results)

        got = stream_phase(server.port, reader, traffic, tag, args, args.seconds, server.log_path)
        building = stream_phase(server.port, reader, traffic, tag + "-b", args, args.seconds, server.log_path,
                                probing=False)
        out["memory"] = server.memory()
        status = client.get_status()
        idle_after, out["idle_after"] = idle_reads(client, reader, args, args.warmup + args.idle_requests)
        emit(results, {"bench": "recommend_idle", "scenario": name, "when": "after", **out["idle_after"]})
    # the idle reference: both idle runs pooled (this VM's p99 moves between runs of a few seconds)
    idle = np.concatenate([idle_before, idle_after])
    out["idle"] = {"bench": "recommend_idle", "scenario": name, "when": "pooled", **percentiles_ms(idle)}
    emit(results, out["idle"])
    out |= summarise(name, "sustained", got, out["idle"]["p99_ms"], args, results)
    busy = building["reader"]
    out["building_only"] = {"bench": "recommend_busy", "scenario": name, "phase": "building, no prober",
                            "requests": len(busy), **percentiles_ms(busy),
                            "p99_ratio_busy_idle": float(np.percentile(busy, 99) / 1e6 / out["idle"]["p99_ms"]),
                            "target_ratio": TARGET_RATIO}
    emit(results, out["building_only"])
    out["learner"] |= {"events_pending_end": status.events_pending, "model_version_end": status.model_version,
                       "items_end": status.items, "links_end": status.links, **out["memory"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="bundled,large", help="comma-separated: bundled, large")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each event stream")
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--per-call", type=int, default=10, help="events per RecordEvents call")
    parser.add_argument("--probe-every", type=int, default=10, help="calls between probes")
    parser.add_argument("--warmup-max-seconds", type=float, default=30.0,
                        help=f"longest warm-up stream (it ends once {KEPT_VERSIONS + 2} publishes and 3 s have passed)")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="prober pause between polls")
    parser.add_argument("--probe-timeout", type=float, default=15.0, help="seconds a probe may take")
    parser.add_argument("--first-timeout", type=float, default=120.0, help="seconds the first event may take")
    parser.add_argument("--idle-requests", type=int, default=3000, help="timed idle RecommendItems")
    parser.add_argument("--warmup", type=int, default=300, help="untimed RecommendItems before them")
    parser.add_argument("--read-interval-ms", type=float, default=2.0,
                        help="the reader's pace: one request every this many ms (one in flight)")
    parser.add_argument("--large-items", type=int, default=1_000_000)
    parser.add_argument("--large-events", type=int, default=16_000_000,
                        help="events of the large model's Zipf log (16M gives ~50M exact links)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for SERVING")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json-out", default=str(OUT), help="where to write all results (JSON)")
    args = parser.parse_args()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not scenarios or set(scenarios) - set(TARGET_P95_MS):
        parser.error(f"--scenarios: choose from {sorted(TARGET_P95_MS)}")
    if min(args.per_call - 2, args.probe_every, args.idle_requests, args.large_items - 1) < 1 or args.seconds <= 0:
        parser.error("--per-call must be >= 3, counts >= 1, --seconds > 0")

    # SIGTERM (e.g. from make or CI) unwinds through the `with` blocks, so servers are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    began = time.perf_counter()
    results: list[dict] = []
    machine = {"bench": "machine", "cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
               "grpc": grpc.__version__, "numba_disable_jit": os.environ.get("NUMBA_DISABLE_JIT", "0"),
               # other work on the machine skews every figure here: say how busy it was
               "loadavg_1m_at_start": os.getloadavg()[0]}
    emit(results, machine)
    # Exploration and the cache off: every request scores the serving snapshot, and a probe's
    # item can only appear as a co-visitation link.
    env = {"COVISIT_EXPLORATION_RATE": "0", "COVISIT_CACHE_ENABLED": "false"}
    n_traffic = int(args.rate * (max(args.seconds, args.warmup_max_seconds) + 5))
    n_contexts = args.warmup + 2 * args.idle_requests
    keep_logs = Path(args.json_out).parent
    keep_logs.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    large_model: dict = {}
    with tempfile.TemporaryDirectory(prefix="covisit-bench-fresh-") as tmp:
        tmp_path = Path(tmp)
        try:
            for name in scenarios:
                data_dir = tmp_path / name
                if name == "bundled":
                    server = BenchServer(data_dir, tmp_path / f"server-{name}.log", env, str(DATA), "online-retail")
                    traffic_for = lambda: bundled_traffic(n_traffic, n_contexts, args.seed)
                else:
                    large_model = build_large(data_dir, args.large_items, args.large_events, args.seed)
                    emit(results, large_model)
                    server = BenchServer(data_dir, tmp_path / f"server-{name}.log", env, "", "")
                    traffic_for = lambda: zipf_traffic(n_traffic, args.large_items, n_contexts,
                                                       n_traffic / args.rate, args.seed + 7)
                with server:
                    done[name] = run_scenario(name, server, traffic_for, args, results)
                shutil.rmtree(data_dir, ignore_errors=True)  # the large one is gigabytes
        except BaseException:
            for log in sorted(tmp_path.glob("server-*.log")):
                print(f"--- {log.name} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]),
                      file=sys.stderr)
            raise
        finally:
            for log in tmp_path.glob("server-*.log"):
                shutil.copy(log, keep_logs / f"freshness-{log.name}")
    total = time.perf_counter() - began
    emit(results, {"bench": "total", "seconds": total, "loadavg_1m_at_end": os.getloadavg()[0]})
    with open(args.json_out, "w") as f:
        json.dump(results, f, indent=2)
    print_table(machine, done, large_model, args, total)


def print_table(machine: dict, done: dict[str, dict], large_model: dict, args, total: float) -> None:
    print()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores; the bench's threads, the server and its "
          f"learner share them. {args.rate:,.0f} events/s in calls of {args.per_call}, a probe every "
          f"{args.probe_every * args.per_call / args.rate * 1e3:.0f} ms; reader: 1 request every "
          f"{args.read_interval_ms:g} ms, one in flight; total {total:.0f} s; load average (1 min) "
          f"{machine['loadavg_1m_at_start']:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    if large_model:
        print(f"large model: {large_model['items']:,} items, {large_model['exact_links']:,} exact links, "
              f"{large_model['serving_links']:,} serving links (window {large_model['window']}, "
              f"top_n {large_model['top_n']}); built and saved in {large_model['total_seconds']:.0f} s")
    print(f"sustained stream of {args.seconds:g} s, after a warm-up stream:")
    head = ("scenario", "events/s", "freshness p50 / p95 / max ms", "target p95", "Recommend p99 idle / busy ms",
            "ratio", "building only", "target")
    widths = (10, 10, 32, 12, 30, 8, 15, 8)

    def line(cells) -> str:
        return "".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(zip(cells, widths)))

    def fresh(f: dict) -> str:
        if not f["reflected"]:
            return f"none of {f['probes']}"
        return f"{f['p50_ms']:.0f} / {f['p95_ms']:.0f} / {f['max_ms']:.0f} ({f['reflected']}/{f['probes']})"

    print(line(head))
    for name, r in done.items():
        f, busy = r["freshness"], r["busy"]
        print(line((name, f"{r['writer']['events_per_s']:.0f}", fresh(f), f"< {f['target_p95_ms']:.0f}",
                    f"{r['idle']['p99_ms']:.2f} / {busy['p99_ms']:.2f}", f"{busy['p99_ratio_busy_idle']:.2f}x",
                    f"{r['building_only']['p99_ms']:.2f} = {r['building_only']['p99_ratio_busy_idle']:.2f}x",
                    f"<= {TARGET_RATIO:g}x")))
    print("busy: the writer, the prober and the reader at once; building only: the writer and the reader"
          " (the same stream, without the prober's own requests)")
    print()
    for name, r in done.items():
        s, first, lr, busy, w = r["start"], r["first"], r["learner"], r["busy"], r["writer"]
        ib, ia = r["idle_before"], r["idle_after"]
        gib = 2**30
        print(f"{name}: serving v{s['model_version']} ({s['items']:,} items, {s['links']:,} serving links) "
              f"{s['seconds_to_serving']:.1f} s after start; server RSS {s.get('rss_bytes', 0) / gib:.2f} GiB then, "
              f"{lr.get('rss_bytes', 0) / gib:.2f} GiB after the stream (peak {lr.get('peak_rss_bytes', 0) / gib:.2f})")
        print(f"  first event after start (alone: the learner waits max_delay for more): "
              f"{first['seconds'] * 1e3:.0f} ms")
        print(f"  RecommendItems p50 / p99 ms: idle before {ib['p50_ms']:.2f} / {ib['p99_ms']:.2f}, after "
              f"{ia['p50_ms']:.2f} / {ia['p99_ms']:.2f}; busy {busy['p50_ms']:.2f} / {busy['p99_ms']:.2f}")
        print(f"  server handler p99 ms (GetMetrics, last 10,000 RecommendItems): idle {ib['server_p99_ms']:.2f}, "
              f"busy {busy['server_p99_ms']:.2f} (reader and prober)")
        print(f"  RecordEvents ({args.per_call} events, durable) p50 / p99 / max ms: {w['record_p50_ms']:.2f} / "
              f"{w['record_p99_ms']:.2f} / {w['record_max_ms']:.0f}; writer at most "
              f"{w['max_behind_schedule_ms']:.0f} ms behind schedule")
        if lr.get("publishes"):
            print(f"  learner: {lr['publishes']} publishes ({lr['publishes_per_s']:.1f}/s, "
                  f"{lr['full_snapshots']} full); "
                  f"interval p50 / p95 / max {lr.get('interval_p50_s', 0):.3f} / {lr.get('interval_p95_s', 0):.3f} / "
                  f"{lr.get('interval_max_s', 0):.3f} s, of which snapshot p50 {lr['snapshot_p50_s']:.3f} s "
                  f"({lr['rows_repruned_p50']:.0f} rows re-pruned); events pending max {lr['events_pending_max']}")
        ws = r["warmup_stream"]
        wl = ws["learner"]
        print(f"  warm-up stream ({ws['writer']['seconds']:.1f} s, {wl.get('publishes', 0)} publishes, interval p50 "
              f"{wl.get('interval_p50_s', 0):.3f} s): freshness p50 / p95 / max ms {fresh(ws['freshness'])}; "
              f"Recommend p99 {ws['busy']['p99_ms']:.2f} ms")


if __name__ == "__main__":
    main()

"""Replicas benchmark: RecommendItems throughput and CPU per request, 1 replica against 2, and
in distributed mode how soon an event acknowledged by one replica is served by every replica.

Each replica is a `covisit serve` process on the bundled data (cache and exploration off, so
every request scores). Where the events live (`--event-log`):

- nats (the default): the replicas share one R3 JetStream stream on a 3-node NATS cluster that
  this script starts on loopback (`nats_cluster.NatsCluster`, each node its own store). The
  first replica seeds the stream from the bundled data and builds its model (about a minute
  here). The second starts with an empty data dir: it fetches the fleet's checkpoint from the
  JetStream object store and reads only the stream after it (its time to SERVING is printed as
  its bootstrap); both then serve the same counts.
- local: each replica has an event log of its own, seeded from the bundled data.

The first replica serves the 1-replica runs and stays up for the 2-replica ones. Replicas
either share one 127.0.0.1 port (`--shared-port`: SO_REUSEPORT, the kernel spreading
connections) or have ports of their own behind the client's round robin
(`CovisitClient.for_replicas`). Load comes from client processes (spawned, each with its own
channels and threads, calls blocking), closed loop: every thread sends its next request when
the last one returns. For each replica count the in-flight calls double from 1 (--max-in-flight
at most); the figure is the run with the most requests per second at p99 under --p99-ms, with
the CPU the replicas, the NATS servers and the whole machine used during it.

Each replica, once it serves, gets a few hundred untimed requests of its own (its first calls
load kernels: 2.7 s for the first on a new replica), so no run times a cold replica.

Freshness (nats mode, both replicas up): a writer sends RecordEvents of --per-call events at
--fresh-rate events/s to the replicas in turn (bundled invoices replayed as new sessions; the
learner publishes what a batch of events has made, so a lone event would wait
learning.max_delay_seconds for company). A warm-up stream runs until every replica has
published a few versions (the first publishes after a start are slower). Then every
--probe-every-th call also carries a probe, a new session of two brand-new items P -> Q, and
the probes go to each replica in turn. From that call's acknowledgement, one prober per replica
(each on a connection that reaches its replica, with a shared port too) polls
RecommendItems([P]) there until Q appears: freshness is the time from the acknowledgement to
that first response, per replica, pooled, split by whether the replica took the write, and per
probe until the last replica serves it ("every replica"). Probes not served within
--probe-timeout count as missed.

On a 2-core machine the load generator takes cores the replicas would use, so a second replica
cannot show what it would on a machine of its own; the CPU figures show where the time went.
Only loopback is contacted; every loop is bounded in count and time; every process started here
is stopped however the run ends. Prints one JSON object per run, then tables, and writes all of
it to --json-out. Run: `make bench-replicas`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import queue
import random
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

# sibling scripts: loadtest/ is this script's sys.path[0]
from bench_core import cpu_model
from bench_freshness import Probe, bundled_traffic, new_client, prober, run_threads, write_stream
from bench_grpc import HOST, K, ROOT, Server
from covisit.client import CovisitClient
from covisit.core.learner import KEPT_VERSIONS
from run_loadtest import CpuMeter

ENV = {"COVISIT_CACHE_ENABLED": "false", "COVISIT_EXPLORATION_RATE": "0"}
SPAWN_SECONDS = 5.0  # for the client processes to start, import and connect before the clock
STREAM = "BENCH_REPLICAS"
OUT = ROOT / "build" / "bench" / "replicas.json"
FRESH_TAG = "fresh"
WARMUP_STREAM_SECONDS = 3.0  # the shortest stream before the first probe
WARMUP_REQUESTS = 300  # untimed RecommendItems to each replica once it serves


class Replica(Server):
    """A `covisit serve` process that may share its port with other replicas, and its event log
    with them (`event_log`: the NATS servers' URLs of a shared JetStream stream)."""

    def __init__(self, data_dir: Path, log_path: Path, port: int, shared: bool,
                 event_log: list[str] | None = None, stream: str = STREAM):
        env = ENV | ({"COVISIT_SERVER_EVENT_LOG_STREAM": stream} if event_log else {})
        super().__init__(data_dir, log_path, env, port)
        self.shared = shared
        self.event_log = event_log or []

    def command(self) -> list[str]:
        shared = ["--reuse-port"] if self.shared else []
        nats = (["--event-log", ",".join(self.event_log), "--event-log-replicas", str(len(self.event_log))]
                if self.event_log else [])
        return [*super().command(), *shared, *nats]

    def wait_serving(self, timeout: float, attempts: int = 3) -> float:
        """Seconds until this replica serves: with a shared port, health there may answer from
        another replica, so until a connection that reaches this one gets its status."""
        started = time.monotonic()
        super().wait_serving(timeout, attempts)
        if self.shared:
            self.connect(started + timeout).close()
        return time.monotonic() - started

    def connect(self, deadline: float) -> CovisitClient:
        """A client whose connection reaches this replica: to its own port, or with a shared port
        a new connection at a time until the kernel gives one to this replica (its status names
        its data dir; a replica not yet serving answers GetStatus with UNAVAILABLE)."""
        while True:
            client = new_client(self.port)
            if not self.shared:
                return client
            try:
                if client.get_status(timeout=2.0).config.get("server.data_dir") == str(self.data_dir):
                    return client
            except grpc.RpcError:
                time.sleep(0.1)
            client.close()
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no connection reached the replica on {self.data_dir}")


class Meters:
    """CPU used by the replicas, by the NATS servers (apart) and by the whole machine, from
    construction to stop()."""

    def __init__(self, replica_pids: list[int], nats_pids: list[int]):
        self.replicas = [CpuMeter(pid) for pid in replica_pids]
        self.nats = [CpuMeter(pid) for pid in nats_pids]
        self.measured: tuple[list[dict], list[dict]] = ([], [])

    def stop(self) -> Meters:
        self.measured = ([m.stop() for m in self.replicas], [m.stop() for m in self.nats])
        return self

    def figures(self, requests: int) -> dict:
        """Cores used (CPU seconds a second) and CPU ms per request, of what stop() measured."""
        replicas, nats = self.measured
        wall = replicas[0]["seconds"]
        out = {"server_cores": sum(c["server_cpu_seconds"] for c in replicas) / wall,
               "server_cpu_ms_per_request": 1000 * sum(c["server_cpu_seconds"] for c in replicas) / max(requests, 1),
               "machine_cores_busy": replicas[0]["machine_cores_busy"]}
        if nats:
            out |= {"nats_cores": sum(c["server_cpu_seconds"] for c in nats) / wall,
                    "nats_cpu_ms_per_request": 1000 * sum(c["server_cpu_seconds"] for c in nats) / max(requests, 1)}
        return out


def client_process(addresses: list[str], threads: int, start: float, seconds: float,
                   contexts: list[list[str]], results) -> None:
    """`threads` threads call RecommendItems back to back from `start` (time.time(), the same
    clock in every process) for `seconds`; puts (latencies ns, errors) on `results`. Each thread
    has its own client, so its own connection(s)."""
    latencies: list[list[int]] = [[] for _ in range(threads)]
    errors: list[str] = []
    stop = start + seconds

    def work(t: int) -> None:
        rng = random.Random(t)
        out = latencies[t]
        with CovisitClient.for_replicas(addresses, timeout=5.0,
                                        options=[("grpc.use_local_subchannel_pool", 1)]) as client:
            client.recommend_items(contexts[0], k=K)  # connect before the clock starts
            time.sleep(max(0.0, start - time.time()))
            while time.time() < stop:
                ctx = contexts[rng.randrange(len(contexts))]
                t0 = time.perf_counter_ns()
                try:
                    client.recommend_items(ctx, k=K)
                except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
                    errors.append(repr(exc))
                out.append(time.perf_counter_ns() - t0)

    workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=seconds + 60)
    results.put((np.array([x for r in latencies for x in r], np.int64), errors))


def load(addresses: list[str], in_flight: int, seconds: float, contexts, pids: list[int],
         nats_pids: list[int]) -> dict:
    """One closed-loop run with `in_flight` calls at a time, spread over up to 4 processes."""
    processes = min(4, in_flight)
    threads = [in_flight // processes + (p < in_flight % processes) for p in range(processes)]
    spawn = multiprocessing.get_context("spawn")  # gRPC does not survive fork
    results = spawn.Queue()
    start = time.time() + SPAWN_SECONDS
    procs = [spawn.Process(target=client_process, args=(addresses, t, start, seconds, contexts, results))
             for t in threads]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start - time.time()))
    meters = Meters(pids, nats_pids)
    time.sleep(max(0.0, start + seconds - time.time()))
    meters.stop()
    gathered = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    ns = np.concatenate([g[0] for g in gathered])
    cpu = meters.figures(len(ns))
    errors = [e for g in gathered for e in g[1]]
    return {"in_flight": in_flight, "client_processes": processes, "requests": len(ns),
            "errors": len(errors), "first_error": errors[0] if errors else "",
            "requests_per_s": len(ns) / seconds,
            **{f"p{q}_ms": float(np.percentile(ns, q)) / 1e6 for q in (50, 95, 99)}, **cpu}


def warm_requests(replica: Replica, contexts: list[list[str]], n: int) -> None:
    """`n` untimed RecommendItems to one replica: its first calls load kernels and warm caches
    (the first on a new replica took 2.7 s), which the client's round robin would put in a run."""
    with replica.connect(time.monotonic() + 60) as client:
        for q in range(n):
            client.recommend_items(contexts[q % len(contexts)], k=K)


def sweep(replicas: list[Replica], nats_pids: list[int], args, contexts) -> list[dict]:
    """The in-flight calls doubling from 1 against `replicas` until p99 reaches --p99-ms (or a
    call fails, or --max-in-flight)."""
    addresses = sorted({f"{HOST}:{r.port}" for r in replicas})
    runs, in_flight = [], 1
    while in_flight <= args.max_in_flight:
        row = {"bench": "replicas", "replicas": len(replicas), "event_log": args.event_log,
               "shared_port": args.shared_port,
               **load(addresses, in_flight, args.seconds, contexts, [r.proc.pid for r in replicas], nats_pids)}
        print(json.dumps(row), flush=True)
        runs.append(row)
        if row["p99_ms"] >= args.p99_ms or row["errors"]:
            break
        in_flight *= 2
    return runs


def best_run(runs: list[dict], p99_ms: float) -> dict | None:
    """The run with the most requests per second among those with p99 under `p99_ms` and no error."""
    passed = [r for r in runs if r["p99_ms"] < p99_ms and not r["errors"]]
    return max(passed, key=lambda r: r["requests_per_s"]) if passed else None


# --- freshness: ack -> served on every replica ---------------------------------------------

class Alternating:
    """RecordEvents to each replica in turn, shifted by one every `probe_every` calls so that the
    probes (every `probe_every`-th call) go to each replica in turn too; `last` is the replica
    that took the latest call."""

    def __init__(self, clients: list[CovisitClient], probe_every: int):
        self.clients = clients
        self.probe_every = probe_every
        self.calls = 0
        self.last = -1

    def record_events(self, events):
        self.last = replica_for_call(self.calls, self.probe_every, len(self.clients))
        self.calls += 1
        return self.clients[self.last].record_events(events)


def replica_for_call(call: int, probe_every: int, replicas: int) -> int:
    """The replica that takes RecordEvents call `call`: consecutive calls alternate, and so do
    the calls 0, probe_every, 2 * probe_every, ... that carry the probes."""
    return (call % probe_every + call // probe_every) % replicas


class FanOut:
    """write_stream's probe queue: each acknowledged probe goes, as a copy of its own, to every
    replica's prober; `origin` maps a probe to the replica that took its call."""

    def __init__(self, writer: Alternating, replicas: int):
        self.writer = writer
        self.queues: list[queue.Queue] = [queue.Queue() for _ in range(replicas)]
        self.origin: dict[int, int] = {}

    def put(self, probe: Probe) -> None:
        self.origin[probe.index] = self.writer.last  # put right after the call that carried it
        for q in self.queues:
            q.put(dataclasses.replace(probe))


def latency_stats(values_ns: list[int], total: int) -> dict:
    """seen/total and p50/p95/max ms of the probes served (values_ns) out of `total`."""
    out = {"seen": len(values_ns), "total": total}
    if values_ns:
        ms = np.array(values_ns, np.float64) / 1e6
        out |= {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                "max_ms": float(ms.max())}
    else:
        out |= {"p50_ms": None, "p95_ms": None, "max_ms": None}
    return out


def freshness_summary(samples: list[tuple[int, int, bool, int | None]], replicas: int) -> dict:
    """Samples (probe, replica, whether that replica took the probe's write, ns from the ack to
    the first response serving it, None: never served) -> the figures per replica, pooled over
    replicas, split by whether the replica took the write, and per probe until the last replica
    served it ("every replica": a probe some replica never served is missed there)."""
    per: list[list[int]] = [[] for _ in range(replicas)]
    totals = [0] * replicas
    split: dict[bool, list[int]] = {True: [], False: []}
    split_totals = {True: 0, False: 0}
    last: dict[int, int | None] = {}  # probe -> its latest delay over replicas (None: missed somewhere)
    for probe, replica, took_write, delay in samples:
        totals[replica] += 1
        split_totals[took_write] += 1
        if delay is not None:
            per[replica].append(delay)
            split[took_write].append(delay)
        previous = last.get(probe, 0)
        last[probe] = None if previous is None or delay is None else max(previous, delay)
    return {"per_replica": [latency_stats(per[r], totals[r]) for r in range(replicas)],
            "pooled": latency_stats([d for p in per for d in p], sum(totals)),
            "took_the_write": latency_stats(split[True], split_totals[True]),
            "other_replicas": latency_stats(split[False], split_totals[False]),
            "every_replica": latency_stats([d for d in last.values() if d is not None], len(last))}


def warm_stream(writer: Alternating, traffic, stream_args, max_seconds: float) -> dict:
    """The stream without probes, a second at a time, until every replica has published
    KEPT_VERSIONS + 2 versions (at least WARMUP_STREAM_SECONDS, at most `max_seconds`): the
    first publishes after a start are slower than the steady state (kernels loaded, the rows
    of the loaded checkpoint copied into a pool with room)."""
    no_probes = argparse.Namespace(**{**vars(stream_args), "probe_every": 10**9})
    published = lambda: [c.get_metrics().publishes for c in writer.clients]  # noqa: E731
    before = published()
    started = time.monotonic()
    chunks = 0
    while True:
        write_stream(writer, traffic, f"{FRESH_TAG}-warm{chunks}", no_probes, 1.0, queue.Queue(), threading.Event())
        chunks += 1
        done = [a - b for a, b in zip(published(), before)]
        elapsed = time.monotonic() - started
        if (min(done) >= KEPT_VERSIONS + 2 and elapsed >= WARMUP_STREAM_SECONDS) or elapsed >= max_seconds:
            return {"seconds": elapsed, "publishes": done}


def converged_digests(clients: list[CovisitClient], deadline: float) -> list[str]:
    """Each replica's counts digest once all have learned the whole stream (or at `deadline`)."""
    while time.monotonic() < deadline:
        statuses = [c.get_status() for c in clients]
        if all(st.events_pending == 0 for st in statuses) and len({st.log_events for st in statuses}) == 1:
            break
        time.sleep(0.2)
    return [c.get_status(counts_digest=True, timeout=30).counts_digest for c in clients]


def freshness(replicas: list[Replica], nats_pids: list[int], traffic, args) -> dict:
    """The writer (replicas in turn) and one prober per replica at once; see the module doc."""
    n = len(replicas)
    deadline = time.monotonic() + 60
    writers = [r.connect(deadline) for r in replicas]  # with a shared port too: a connection each
    probing = [r.connect(deadline) for r in replicas]
    writer = Alternating(writers, args.probe_every)
    fan = FanOut(writer, n)
    stream_args = argparse.Namespace(per_call=args.per_call, rate=args.fresh_rate, probe_every=args.probe_every)
    seconds = (args.fresh_samples + 1) * args.probe_every * args.per_call / args.fresh_rate
    writer_done, abort, never = threading.Event(), threading.Event(), threading.Event()  # never set
    limit = seconds * 2 + args.probe_timeout + 30
    try:
        warmed = warm_stream(writer, traffic, stream_args, args.warmup_max_seconds)
        meters = Meters([r.proc.pid for r in replicas], nats_pids)

        def write() -> dict:
            try:
                return write_stream(writer, traffic, FRESH_TAG, stream_args, seconds, fan, never)
            finally:
                writer_done.set()

        got = run_threads({"writer": write, **{
            f"prober{i}": (lambda i=i: prober(probing[i], fan.queues[i], writer_done, abort, args.poll_ms / 1e3,
                                              args.probe_timeout, limit)) for i in range(n)}}, limit + 10)
        wrote = got["writer"]
        cpu = meters.stop().figures(wrote["calls"])
        digests = converged_digests(writers, time.monotonic() + 60)
    finally:
        abort.set()
        writer_done.set()
        for c in writers + probing:
            c.close()
    samples = [(p.index, i, fan.origin[p.index] == i, p.seen_ns - p.acked_ns if p.seen_ns else None)
               for i in range(n) for p in got[f"prober{i}"]]
    cpu = {k: v for k, v in cpu.items() if not k.endswith("per_request")}  # the probers' calls are requests too
    return {"bench": "replicas_freshness", "replicas": n, "ports": [r.port for r in replicas],
            "events_per_s_asked": args.fresh_rate, "per_call": args.per_call, "probe_every": args.probe_every,
            "poll_ms": args.poll_ms, "probe_timeout_s": args.probe_timeout,
            "warm_up": warmed, "writer": wrote, "cpu": cpu, "counts_digests": digests,
            "counts_equal": len(set(digests)) == 1, **freshness_summary(samples, n),
            "samples": [{"probe": p, "replica": r, "took_write": t, "ms": d / 1e6 if d is not None else None}
                        for p, r, t, d in samples]}


# --- the run ---------------------------------------------------------------------------------

def run(args, traffic, tmp: Path) -> dict:
    """Both replica counts (and freshness) on a NATS cluster or local logs; returns the results."""
    out: dict = {"startup_seconds": {}}
    cluster = None
    replicas: list[Replica] = []
    try:
        if args.event_log == "nats":
            from nats_cluster import NatsCluster  # needs nats-py, from the test extra
            t0 = time.monotonic()
            cluster = NatsCluster(tmp / "nats").start()
            out["startup_seconds"]["nats_cluster"] = time.monotonic() - t0
        urls = cluster.urls if cluster else None
        nats_pids = [node.process.pid for node in cluster.nodes] if cluster else []
        for r in range(2):
            port = replicas[0].port if (args.shared_port and replicas) else 0
            replica = Replica(tmp / f"r{r}", tmp / f"r{r}.log", port, args.shared_port, urls)
            replicas.append(replica)
            replica.start()
            out["startup_seconds"][f"replica{r}"] = replica.wait_serving(args.startup_timeout)
            warm_requests(replica, traffic.contexts, WARMUP_REQUESTS)
            print(json.dumps({"bench": "startup", "replica": r,
                              "serving_after_s": out["startup_seconds"][f"replica{r}"]}), flush=True)
            out[f"runs_{r + 1}"] = sweep(replicas, nats_pids, args, traffic.contexts)
        if urls and args.fresh_samples > 0:
            out["freshness"] = freshness(replicas, nats_pids, traffic, args)
        return out
    finally:
        for r in replicas:
            r.stop()
        if cluster is not None:
            cluster.stop()


def print_tables(result: dict, args) -> None:
    mode = ("one R3 JetStream stream on a 3-node NATS cluster on loopback" if args.event_log == "nats"
            else "an event log of its own per replica")
    print(f"\nmachine: {result['machine']}, {result['cores']} cores; the client processes share them with the"
          f" replicas{' and the NATS servers' if args.event_log == 'nats' else ''}")
    print(f"events: {mode}; {'one shared port' if args.shared_port else 'a port each, client round robin'}; "
          f"RecommendItems k={K}, cache and exploration off")
    nats = args.event_log == "nats"
    print(f"{'replicas':<10}{'in flight':>10}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'replica cores':>15}"
          f"{'CPU ms/req':>12}" + (f"{'NATS cores':>12}" if nats else "") + f"{'machine cores':>15}")
    for n in (1, 2):
        row = result["best"][str(n)]
        if row is None:
            print(f"{n:<10}no run had p99 under {args.p99_ms:g} ms")
            continue
        print(f"{n:<10}{row['in_flight']:>10}{row['requests_per_s']:>9.0f}{row['p50_ms']:>8.2f}{row['p99_ms']:>8.2f}"
              f"{row['server_cores']:>15.2f}{row['server_cpu_ms_per_request']:>12.3f}"
              + (f"{row['nats_cores']:>12.2f}" if nats else "") + f"{row['machine_cores_busy']:>15.2f}")
    fresh = result.get("freshness")
    if not fresh:
        if nats:
            print("\nfreshness: not measured (--fresh-samples 0)")
        return
    w, cpu = fresh["writer"], fresh["cpu"]
    print(f"\nfreshness, ack -> served: {fresh['replicas']} replicas, RecordEvents of {fresh['per_call']} "
          f"to each in turn at {w['events_per_s']:.0f} events/s, a probe every {fresh['probe_every']} calls "
          f"(RecordEvents p50 / p99 {w['record_p50_ms']:.1f} / {w['record_p99_ms']:.1f} ms)")
    print(f"{'':<24}{'served':>10}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    rows = [(f"replica {i} (:{port})", s) for i, (port, s) in enumerate(zip(fresh["ports"], fresh["per_replica"]))]
    rows += [("pooled", fresh["pooled"]), ("  took the write", fresh["took_the_write"]),
             ("  the other replica", fresh["other_replicas"]), ("every replica (last)", fresh["every_replica"])]
    for name, s in rows:
        figures = "".join(f"{s[k]:>9.0f}" if s[k] is not None else f"{'-':>9}" for k in ("p50_ms", "p95_ms", "max_ms"))
        print(f"{name:<24}{s['seen']:>5}/{s['total']:<4}{figures}")
    print(f"CPU meanwhile: replicas {cpu['server_cores']:.2f} cores, NATS {cpu.get('nats_cores', 0):.2f} cores, "
          f"machine {cpu['machine_cores_busy']:.2f} of {os.cpu_count()}")
    print(f"counts afterwards: {'the same on every replica' if fresh['counts_equal'] else 'DIFFERENT'} "
          f"(digests {', '.join(d[:12] for d in fresh['counts_digests'])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--event-log", choices=("nats", "local"), default="nats",
                        help="one shared JetStream stream (nats) or a local log per replica")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each run")
    parser.add_argument("--p99-ms", type=float, default=10.0, help="the p99 a run must stay under")
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument("--shared-port", action="store_true", help="replicas share one port (SO_REUSEPORT)")
    parser.add_argument("--fresh-samples", type=int, default=100, help="freshness probes (0: none)")
    parser.add_argument("--fresh-rate", type=float, default=1000.0, help="events per second while probing")
    parser.add_argument("--per-call", type=int, default=10, help="events per RecordEvents call")
    parser.add_argument("--probe-every", type=int, default=10, help="calls between probes")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="each prober's pause between polls")
    parser.add_argument("--probe-timeout", type=float, default=10.0, help="seconds a probe may take")
    parser.add_argument("--warmup-max-seconds", type=float, default=60.0,
                        help="longest stream before the probes (until every replica has published a few versions)")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work-dir", help="an empty directory for the servers' data and logs, kept"
                        " (default: a temporary one, deleted)")
    parser.add_argument("--json-out", default=str(OUT), help="where to write all results (JSON)")
    args = parser.parse_args()
    if min(args.seconds, args.max_in_flight, args.fresh_rate, args.per_call, args.probe_every) <= 0:
        parser.error("--seconds, --max-in-flight, --fresh-rate, --per-call and --probe-every must be > 0")
    started = time.monotonic()
    n_events = (args.fresh_samples + 1) * args.probe_every * args.per_call + 1000  # the stream cycles them
    traffic = bundled_traffic(n_events, 2000, args.seed)  # its contexts: 1-10 items of real invoices
    with tempfile.TemporaryDirectory(prefix="covisit-replicas-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = {"machine": cpu_model(), "cores": os.cpu_count(), "args": vars(args), **run(args, traffic, work)}
    result["best"] = {str(n): best_run(result[f"runs_{n}"], args.p99_ms) for n in (1, 2)}
    result["wall_seconds"] = time.monotonic() - started
    print_tables(result, args)
    print(f"\nwall time {result['wall_seconds']:.0f} s (startup: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in result["startup_seconds"].items()) + ")")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=1))
        print(f"written to {args.json_out}")


if __name__ == "__main__":
    main()

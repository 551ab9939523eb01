"""Replicas benchmark: RecommendItems throughput and server CPU per request, 1 replica against 2.

Each replica is a `covisit serve` process on the bundled data (cache and exploration off, so
every request scores); replicas either share one 127.0.0.1 port (`--shared-port`: SO_REUSEPORT,
the kernel spreading connections) or have ports of their own behind the client's round robin
(`CovisitClient.for_replicas`). Load comes from client processes (spawned, each with its own
channels and threads, calls blocking), closed loop: every thread sends its next request when
the last one returns. For each replica count the in-flight calls double from 1 (--max-in-flight
at most); the figure is the run with the most requests per second at p99 under --p99-ms, with
the CPU the replicas and the whole machine used during it.

On a 2-core machine the load generator takes cores the replicas would use, so a second replica
cannot show what it would on a machine of its own; the CPU figures show where the time went.
Only loopback is contacted; every loop is bounded in count and time. Run:
`.venv/bin/python loadtest/bench_replicas.py`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench_core import cpu_model  # sibling scripts: loadtest/ is this script's sys.path[0]
from bench_grpc import DATA, HOST, K, Server, invoice_contexts
from covisit.client import CovisitClient
from run_loadtest import CpuMeter

ENV = {"COVISIT_CACHE_ENABLED": "false", "COVISIT_EXPLORATION_RATE": "0"}
SPAWN_SECONDS = 5.0  # for the client processes to start, import and connect before the clock


class Replica(Server):
    """A `covisit serve` process that may share its port with other replicas."""

    def __init__(self, data_dir: Path, log_path: Path, port: int, shared: bool):
        super().__init__(data_dir, log_path, ENV, port)
        self.shared = shared

    def command(self) -> list[str]:
        return [*super().command(), *(["--reuse-port"] if self.shared else [])]


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


def load(addresses: list[str], in_flight: int, seconds: float, contexts, pids: list[int]) -> dict:
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
    meters = [CpuMeter(pid) for pid in pids]
    time.sleep(max(0.0, start + seconds - time.time()))
    cpu = [m.stop() for m in meters]
    gathered = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    ns = np.concatenate([g[0] for g in gathered])
    errors = [e for g in gathered for e in g[1]]
    wall = cpu[0]["seconds"]
    return {"in_flight": in_flight, "client_processes": processes, "requests": len(ns),
            "errors": len(errors), "first_error": errors[0] if errors else "",
            "requests_per_s": len(ns) / seconds,
            **{f"p{q}_ms": float(np.percentile(ns, q)) / 1e6 for q in (50, 95, 99)},
            "server_cores": sum(c["server_cpu_seconds"] for c in cpu) / wall,
            "server_cpu_ms_per_request": 1000 * sum(c["server_cpu_seconds"] for c in cpu) / max(len(ns), 1),
            "machine_cores_busy": cpu[0]["machine_cores_busy"]}


def bench(n: int, args, contexts, tmp: Path) -> list[dict]:
    """Start `n` replicas, sweep the in-flight calls, stop them."""
    replicas: list[Replica] = []
    try:
        for r in range(n):
            port = replicas[0].port if (args.shared_port and replicas) else 0
            replicas.append(Replica(tmp / f"r{n}-{r}", tmp / f"r{n}-{r}.log", port, args.shared_port))
            replicas[-1].start()
            replicas[-1].wait_serving(args.startup_timeout)
        addresses = sorted({f"{HOST}:{r.port}" for r in replicas})
        runs, in_flight = [], 1
        while in_flight <= args.max_in_flight:
            row = {"bench": "replicas", "replicas": n, "shared_port": args.shared_port,
                   **load(addresses, in_flight, args.seconds, contexts, [r.proc.pid for r in replicas])}
            print(json.dumps(row), flush=True)
            runs.append(row)
            if row["p99_ms"] >= args.p99_ms or row["errors"]:
                break
            in_flight *= 2
        return runs
    finally:
        for r in replicas:
            r.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each run")
    parser.add_argument("--p99-ms", type=float, default=10.0, help="the p99 a run must stay under")
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument("--shared-port", action="store_true", help="replicas share one port (SO_REUSEPORT)")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    contexts = invoice_contexts(DATA, 2000, args.seed)
    best = {}
    with tempfile.TemporaryDirectory(prefix="covisit-replicas-") as tmp:
        for n in (1, 2):
            passed = [r for r in bench(n, args, contexts, Path(tmp)) if r["p99_ms"] < args.p99_ms and not r["errors"]]
            best[n] = max(passed, key=lambda r: r["requests_per_s"]) if passed else None
    print(f"\nmachine: {cpu_model()}; client processes share its cores with the replicas; "
          f"{'one shared port' if args.shared_port else 'a port each, client round robin'}")
    print(f"{'replicas':<10}{'in flight':>10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'server cores':>14}{'server CPU ms/req':>19}{'machine cores busy':>20}")
    for n, row in best.items():
        if row is None:
            print(f"{n:<10}no run had p99 under {args.p99_ms:g} ms")
            continue
        print(f"{n:<10}{row['in_flight']:>10}{row['requests_per_s']:>10.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
              f"{row['server_cores']:>14.2f}{row['server_cpu_ms_per_request']:>19.3f}{row['machine_cores_busy']:>20.2f}")


if __name__ == "__main__":
    main()

"""End-to-end gRPC benchmark: the real server in its own process, the real CovisitClient.

The server (`python -m covisit.server.cli serve`) serves the bundled online-retail log on a free
127.0.0.1 port from a temporary data directory. Once health says SERVING, RecommendItems is
called with contexts of 1-10 items cut from real invoices of that log:

- sequentially (one request in flight), cache off, so every request scores;
- the same with the cache on and a small set of contexts, so every timed request is a cache hit;
- from several client threads at once (cache off), for throughput;
- a trivial unary call (grpc.health.v1 Check) on the same server, the floor gRPC itself sets.

GetMetrics gives the server-side handler latency of each run. Prints one JSON object per figure,
then a table beside the targets. Only loopback is ever contacted; every loop is bounded in count
and in time; the server is stopped (terminate, then kill) however the run ends. Run: `make bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench_core import cpu_model  # a sibling script: loadtest/ is this script's sys.path[0]
from covisit.client import CovisitClient
from covisit.core.datasets import read_online_retail

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "loadtest" / "data" / "online_retail.csv.gz"
HOST = "127.0.0.1"  # loopback only
K = 10
RUN_SECONDS = 300.0  # no timed loop runs longer than this, whatever its count


def free_port() -> int:
    """A port the OS just called free on 127.0.0.1 (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def invoice_contexts(path: Path, n: int, seed: int) -> list[list[str]]:
    """`n` contexts of 1-10 items, each a contiguous run of one real invoice (distinct invoices
    while they last), in the log's own order within the invoice."""
    report = read_online_retail(path)
    by_invoice: dict[str, list[str]] = defaultdict(list)
    for ev in report.events:
        by_invoice[ev.session_id].append(ev.item_id)
    invoices = list(by_invoice.values())
    del report, by_invoice
    rng = random.Random(seed)
    rng.shuffle(invoices)
    return cut_contexts(invoices, n, rng)


def cut_contexts(sessions: list[list[str]], n: int, rng: random.Random) -> list[list[str]]:
    """`n` contexts of 1-10 items, each a contiguous run of one session (cycled)."""
    out = []
    for q in range(n):
        items = sessions[q % len(sessions)]
        length = min(rng.randint(1, 10), len(items))
        start = rng.randint(0, len(items) - length)
        out.append(items[start: start + length])
    return out


class Server:
    """`covisit serve` in a child process; use as a context manager (stops it on the way out)."""

    def __init__(self, data_dir: Path, log_path: Path, env: dict[str, str], port: int = 0):
        self.data_dir, self.log_path, self.env = data_dir, log_path, env
        self.proc: subprocess.Popen | None = None
        self.fixed_port = port  # 0: a free one at each start
        self.port = 0

    def command(self) -> list[str]:
        return [sys.executable, "-m", "covisit.server.cli", "serve", *self.flags("online-retail", str(DATA))]

    def flags(self, preset: str, data: str) -> list[str]:
        return ["--host", HOST, "--port", str(self.port), "--preset", preset, "--data", data,
                "--data-dir", str(self.data_dir), "--insecure-admin"]

    def start(self) -> None:
        self.port = self.fixed_port or free_port()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("COVISIT_")}
        child_env["COVISIT_MONITOR_METRICS_PORT"] = "0"  # never clash with a server already running
        child_env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=child_env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)

    def wait_serving(self, timeout: float, attempts: int = 3) -> float:
        """Seconds until health reports SERVING; raises if the server dies or `timeout` passes.
        A server that lost its port to another process (between free_port and its bind) is
        started again on another one."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            with grpc.insecure_channel(f"{HOST}:{self.port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while time.monotonic() < deadline and self.proc.poll() is None:
                    try:
                        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            return time.monotonic() - started
                    except grpc.RpcError:
                        pass  # not listening yet
                    time.sleep(0.2)
            if self.proc.poll() is None:
                break
            attempts -= 1
            if attempts == 0 or "bind" not in self.log_tail(5).lower():
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            self.start()
        raise TimeoutError(f"server not SERVING after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def percentiles_ms(ns: np.ndarray) -> dict[str, float]:
    return {f"p{q}_ms": float(np.percentile(ns, q)) / 1e6 for q in (50, 95, 99)} | {
        "mean_ms": float(ns.mean()) / 1e6, "max_ms": float(ns.max()) / 1e6}


def sequential(client: CovisitClient, contexts: list[list[str]], warmup: int, n: int) -> tuple[np.ndarray, dict]:
    """`warmup` untimed calls, then `n` timed ones, one in flight; contexts are cycled."""
    deadline = time.monotonic() + RUN_SECONDS
    for q in range(warmup):
        client.recommend_items(contexts[q % len(contexts)], k=K)
        if time.monotonic() > deadline:
            raise TimeoutError("warm-up ran past its time limit")
    ns = np.empty(n, np.int64)
    cached = returned = 0
    sources: dict[str, int] = defaultdict(int)
    for q in range(n):
        ctx = contexts[(warmup + q) % len(contexts)]
        t0 = time.perf_counter_ns()
        rec = client.recommend_items(ctx, k=K)
        ns[q] = time.perf_counter_ns() - t0
        cached += rec.from_cache
        returned += len(rec.items)
        for item in rec.items:
            sources[str(item.source)] += 1
        if time.monotonic() > deadline:
            ns = ns[: q + 1]
            break
    return ns, {"requests": len(ns), "from_cache": cached, "mean_items_returned": returned / len(ns),
                "sources": dict(sources)}


def trivial_unary(port: int, warmup: int, n: int) -> np.ndarray:
    """Health Check, sequentially: a unary call with no work behind it, through the same server."""
    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        request = health_pb2.HealthCheckRequest(service="")
        deadline = time.monotonic() + RUN_SECONDS
        for _ in range(warmup):
            check(request, timeout=1.0)
        ns = np.empty(n, np.int64)
        for q in range(n):
            t0 = time.perf_counter_ns()
            check(request, timeout=1.0)
            ns[q] = time.perf_counter_ns() - t0
            if time.monotonic() > deadline:
                return ns[: q + 1]
    return ns


def concurrent(client: CovisitClient, contexts: list[list[str]], threads: int, n: int) -> tuple[np.ndarray, float]:
    """`n` calls split over `threads` client threads sharing one channel; returns (latencies, seconds)."""
    per_thread = [n // threads + (t < n % threads) for t in range(threads)]
    results: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)
    deadline = time.monotonic() + RUN_SECONDS

    def work(t: int) -> None:
        out = results[t]
        try:
            barrier.wait(timeout=30)
            for q in range(per_thread[t]):
                ctx = contexts[(t * 7919 + q) % len(contexts)]
                t0 = time.perf_counter_ns()
                client.recommend_items(ctx, k=K)
                out.append(time.perf_counter_ns() - t0)
                if time.monotonic() > deadline:
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    barrier.wait(timeout=30)
    started = time.perf_counter()
    for w in workers:
        w.join(timeout=RUN_SECONDS + 30)
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return np.array([x for r in results for x in r], np.int64), seconds


def server_metrics(client: CovisitClient) -> dict:
    m = client.get_metrics()
    return {"server_p50_ms": m.latency_p50_ms, "server_p95_ms": m.latency_p95_ms,
            "server_p99_ms": m.latency_p99_ms, "server_recommend_requests": m.recommend_requests,
            "server_cache_hits": m.cache_hits}


def emit(results: list, row: dict) -> None:
    results.append(row)
    print(json.dumps(row), flush=True)


def run_server(name: str, env: dict[str, str], tmp: Path, args, contexts_for, results: list) -> dict:
    """Start a server with `env`, run this configuration's measurements, stop it."""
    out: dict = {}
    with Server(tmp / "data", tmp / f"server-{name}.log", env) as server:
        server.start()
        contexts = contexts_for()  # read the log while the server loads it
        startup = server.wait_serving(args.startup_timeout)
        emit(results, {"bench": "server_start", "run": name, "env": env, "seconds_to_serving": startup})
        with CovisitClient(f"{HOST}:{server.port}", timeout=5.0) as client:
            ns, info = sequential(client, contexts, args.warmup, args.requests)
            row = {"bench": "recommend_sequential", "run": name, "k": K, "warmup": args.warmup, **info,
                   **percentiles_ms(ns), **server_metrics(client)}
            emit(results, row)
            out["sequential"] = row
            if name == "cache_off":
                ns = trivial_unary(server.port, args.warmup, args.requests)
                out["trivial"] = {"bench": "trivial_unary_sequential", "run": name, "method": "Health/Check",
                                  "requests": len(ns), **percentiles_ms(ns)}
                emit(results, out["trivial"])
                if args.threads > 0:
                    ns, seconds = concurrent(client, contexts, args.threads, args.concurrent_requests)
                    out["concurrent"] = {"bench": "recommend_concurrent", "run": name, "threads": args.threads,
                                         "requests": len(ns), "seconds": seconds,
                                         "requests_per_s": len(ns) / seconds, **percentiles_ms(ns)}
                    emit(results, out["concurrent"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="timed sequential requests per run")
    parser.add_argument("--warmup", type=int, default=500, help="untimed requests before them")
    parser.add_argument("--threads", type=int, default=8, help="client threads of the concurrent run (0 = skip it)")
    parser.add_argument("--concurrent-requests", type=int, default=8000, help="requests of the concurrent run, all threads")
    parser.add_argument("--cache-pool", type=int, default=500, help="distinct contexts of the cache-on run")
    parser.add_argument("--no-cache-run", action="store_true", help="skip the cache-on server")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for SERVING")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json-out", help="also write all results to this JSON file")
    args = parser.parse_args()
    if min(args.requests, args.warmup + 1, args.cache_pool, args.concurrent_requests) < 1:
        parser.error("counts must be >= 1")

    # SIGTERM (e.g. from make or CI) unwinds through the `with` blocks, so the server is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    began = time.perf_counter()
    results: list[dict] = []
    machine = {"bench": "machine", "cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
               "grpc": grpc.__version__, "numba_disable_jit": os.environ.get("NUMBA_DISABLE_JIT", "0")}
    emit(results, machine)
    # Exploration off: the figures are of scoring and the cache, not of a random extra slot.
    base = {"COVISIT_EXPLORATION_RATE": "0"}
    contexts: list[list[str]] = []

    def all_contexts() -> list[list[str]]:
        if not contexts:
            contexts.extend(invoice_contexts(DATA, args.warmup + args.requests, args.seed))
            lengths = np.array([len(c) for c in contexts])
            emit(results, {"bench": "contexts", "source": "online-retail invoices", "count": len(contexts),
                           "mean_items": float(lengths.mean()), "min_items": int(lengths.min()),
                           "max_items": int(lengths.max())})
        return contexts

    with tempfile.TemporaryDirectory(prefix="covisit-bench-grpc-") as tmp:
        tmp_path = Path(tmp)
        try:
            off = run_server("cache_off", base | {"COVISIT_CACHE_ENABLED": "false"}, tmp_path, args,
                             all_contexts, results)
            on = None
            if not args.no_cache_run:
                # A small pool cycled: the warm-up misses fill the cache, every timed call hits it.
                warm = max(args.warmup, args.cache_pool)
                on_args = argparse.Namespace(**{**vars(args), "warmup": warm})
                on = run_server("cache_on", base | {"COVISIT_CACHE_ENABLED": "true"}, tmp_path, on_args,
                                lambda: all_contexts()[: args.cache_pool], results)
        except BaseException:
            for log in sorted(tmp_path.glob("server-*.log")):
                print(f"--- {log.name} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]),
                      file=sys.stderr)
            raise
    total = time.perf_counter() - began
    emit(results, {"bench": "total", "seconds": total})

    def ms3(row: dict, prefix: str = "") -> str:
        return " / ".join(f"{row[f'{prefix}p{q}_ms']:.3f}" for q in (50, 95, 99))

    s = off["sequential"]
    rows = [
        ("RecommendItems, 1 in flight, cache off: p50 ms", f"{s['p50_ms']:.3f}", "< 1"),
        ("RecommendItems, 1 in flight, cache off: p99 ms", f"{s['p99_ms']:.3f}", "< 2"),
        ("  same, p50 / p95 / p99 ms", ms3(s), ""),
        ("  server handler (GetMetrics) p50 / p95 / p99 ms", ms3(s, "server_"), ""),
        ("trivial unary (Health/Check), 1 in flight: p50 / p95 / p99 ms", ms3(off["trivial"]), "(gRPC floor)"),
    ]
    if on:
        c = on["sequential"]
        rows += [
            (f"RecommendItems, cache hits ({c['from_cache']}/{c['requests']}): p50 / p95 / p99 ms", ms3(c), ""),
            ("  server handler (GetMetrics, incl. warm-up misses) p50/p95/p99", ms3(c, "server_"), ""),
        ]
    if "concurrent" in off:
        cc = off["concurrent"]
        rows += [
            (f"RecommendItems, {cc['threads']} client threads, cache off: req/s", f"{cc['requests_per_s']:.0f}", ""),
            ("  same, p50 / p95 / p99 ms", ms3(cc), ""),
        ]
    print()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores; client and server share them; "
          f"{s['requests']} timed requests after {s['warmup']} warm-up; total {total:.0f} s")
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'figure':<{width}}{'measured':>26}{'target':>14}")
    for label, measured, target in rows:
        print(f"{label:<{width}}{measured:>26}{target:>14}")
    print("server handler latencies cover the warm-up calls too (the server keeps its last 10,000).")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

"""`make loadtest`: run loadtest/locustfile.py headless against a covisit server and judge it.

Starts `covisit serve` on the bundled data on a free 127.0.0.1 port (unless --target names a
running server; only loopback targets are accepted), runs Locust for a fixed time and user
count, keeps Locust's CSV stats and HTML report under --out, prints a summary (requests per
second, p50/p95/p99 and failures per RPC) and exits non-zero if any request failed or the p95 of
RecommendItems is above --slo-p95-ms (50 ms by default, the original design's SLO).

With --find-max-rps it searches instead for the highest rate the server answers with
RecommendItems p99 under --p99-ms (10 ms by default) and no failure: the shoppers' pace (steps
per second each, --step-rate of the locustfile) doubles from 1 until a run misses, then the last
good and the first bad pace are bisected three times; each run takes --step-seconds. A run that
delivers less than 90% of the RecommendItems rate it offers (users x pace) is saturated: the
search stops there, as a faster pace would only queue in the load generator; the figure says so
("saturated": true), and the CPU figures tell whether the server (at about one core, its GIL's
limit) or the machine ran out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# sibling scripts: loadtest/ is this script's sys.path[0]
from bench_grpc import ROOT, Server
from covisit.server.app import is_loopback

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
OUT = ROOT / "build" / "loadtest"
SATURATED = 0.9  # a run that reaches less than this share of its offered rate could go no faster
COLUMNS = {"requests": "Request Count", "failures": "Failure Count",
           "p50_ms": "50%", "p95_ms": "95%", "p99_ms": "99%", "max_ms": "100%"}


def run_locust(target: str, args, seconds: int, prefix: Path, extra: list[str],
               server_pid: int | None = None) -> tuple[int, dict]:
    """Locust headless against `target` with args.users in args.processes processes. Returns its
    exit code (non-zero when requests failed) and the measured window: from when every user had
    started (and each Locust process had reset its stats) to the time limit, its length in seconds
    and the CPU the server process and the whole machine used in it ({} if Locust never got there)."""
    users, spawn_rate = args.users, args.spawn_rate
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", target,
               "--processes", str(args.processes),
               "-u", str(users), "-r", str(spawn_rate), "-t", f"{seconds}s",
               "--csv", str(prefix), "--html", str(prefix) + ".html", "--only-summary",
               "--reset-stats", *extra]  # figures from when every user has started
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(seconds + 120, proc.kill)
    watchdog.start()
    resets, meter, window = 0, None, {}
    try:
        for line in proc.stderr:  # Locust logs to stderr: pass it on, timing the measured window
            sys.stderr.write(line)
            resets += "Resetting stats" in line
            if meter is None and resets == args.processes + 1:  # the master's and every worker's
                meter = CpuMeter(server_pid)
            elif meter is not None and not window and "run-time limit reached" in line:
                window = meter.stop()
        code = proc.wait()
    finally:
        watchdog.cancel()
        proc.kill()
    return code, window


class CpuMeter:
    """CPU seconds per second of wall time used by one process and by the whole machine, from
    Linux's /proc, between construction and stop()."""

    def __init__(self, pid: int | None):
        self.pid = pid
        self.start = self.read()

    def read(self) -> tuple[float, float, float]:
        hz = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / hz  # all but idle and iowait
        process = 0.0
        if self.pid is not None:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            process = (int(fields[11]) + int(fields[12])) / hz  # utime + stime
        return time.monotonic(), busy, process

    def stop(self) -> dict:
        (t0, busy0, process0), (t1, busy1, process1) = self.start, self.read()
        wall = max(t1 - t0, 1e-9)
        out = {"seconds": wall, "machine_cores_busy": (busy1 - busy0) / wall}
        if self.pid is not None:
            out |= {"server_cores": (process1 - process0) / wall, "server_cpu_seconds": process1 - process0}
        return out


def read_stats(prefix: Path, seconds: float) -> dict[str, dict[str, float]]:
    """RPC name (and "Aggregated") -> the COLUMNS figures from Locust's stats CSV, with "rps"
    counted over the `seconds` measured here: Locust's own Requests/s starts the clock at the
    master's stats reset, before the workers' (650 calls in 14 s came out as 35/s)."""
    out = {}
    with open(f"{prefix}_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            out[row["Name"]] = {key: float(row[column] or 0) for key, column in COLUMNS.items()}
            out[row["Name"]]["rps"] = out[row["Name"]]["requests"] / seconds
    return out


def search_max(trial, start: float = 1.0, limit: float = 256.0, bisections: int = 3) -> None:
    """Calls trial(pace) -> (passed, saturated) with the pace doubling from `start` while runs
    pass and keep up, at most up to `limit`; then the last passing and the first failing pace are
    bisected `bisections` times. A run that passes but falls short of its pace (saturated) ends
    the doubling: a faster pace would only queue more in the load generator."""
    good, bad, pace = 0.0, 0.0, start
    while pace <= limit:
        passed, saturated = trial(pace)
        if not passed:
            bad = pace
            break
        good = pace
        if saturated:
            return
        pace *= 2
    for _ in range(bisections if good and bad else 0):
        middle = (good + bad) / 2
        good, bad = (middle, bad) if trial(middle)[0] else (good, middle)


def find_max_rps(target: str, args, extra: list[str], out: Path, server_pid: int | None) -> dict | None:
    """The passing run with the highest calls per second (see the module docstring), or None."""
    runs = []

    def trial(pace: float) -> tuple[bool, bool]:
        prefix = out / f"pace-{pace:g}"
        code, window = run_locust(target, args, args.step_seconds, prefix, [*extra, "--step-rate", f"{pace:g}"],
                                  server_pid)
        stats = read_stats(prefix, window.get("seconds", args.step_seconds))
        total, recommend = stats.get("Aggregated", {}), stats.get("RecommendItems", {})
        passed = (code == 0 and not total.get("failures") and bool(recommend)
                  and recommend["p99_ms"] < args.p99_ms)
        offered = args.users * pace  # steps per second asked for; each step is one RecommendItems
        saturated = recommend.get("rps", 0.0) < SATURATED * offered
        runs.append({"pace": pace, "passed": passed, "saturated": saturated, "rps": total.get("rps", 0.0),
                     "recommend_rps": recommend.get("rps", 0.0), "offered_recommend_rps": offered,
                     "recommend_p99_ms": recommend.get("p99_ms"), "failures": total.get("failures", 0.0),
                     **cpu_figures(window, total.get("requests", 0.0))})
        print(json.dumps(runs[-1]), flush=True)
        return passed, saturated

    search_max(trial, limit=args.max_pace)
    passed = [r for r in runs if r["passed"]]
    return max(passed, key=lambda r: r["rps"]) if passed else None


def cpu_figures(window: dict, calls: float) -> dict:
    """The window's CPU figures, with the server's CPU milliseconds per call when it was measured."""
    out = {key: window[key] for key in ("machine_cores_busy", "server_cores") if key in window}
    if "server_cpu_seconds" in window:
        out["server_cpu_ms_per_call"] = 1000 * window["server_cpu_seconds"] / max(calls, 1.0)
    return out


def summary(stats: dict[str, dict[str, float]]) -> str:
    lines = [f"{'rpc':<22}{'requests':>10}{'failures':>10}{'req/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"]
    for name, s in sorted(stats.items(), key=lambda item: item[0] == "Aggregated"):
        lines.append(f"{name:<22}{s['requests']:>10.0f}{s['failures']:>10.0f}{s['rps']:>10.1f}"
                     f"{s['p50_ms']:>9.0f}{s['p95_ms']:>9.0f}{s['p99_ms']:>9.0f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="", help="HOST:PORT of a running server on loopback (default: start one)")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=50.0, help="users started per second")
    parser.add_argument("--processes", type=int, default=2,
                        help="Locust processes; each has one call in flight (see the locustfile)")
    parser.add_argument("--seconds", type=int, default=60, help="how long Locust runs")
    parser.add_argument("--slo-p95-ms", type=float, default=50.0, help="RecommendItems p95 must stay below this")
    parser.add_argument("--out", default=str(OUT), help="where the CSV stats and the HTML report go")
    parser.add_argument("--find-max-rps", action="store_true",
                        help="search for the highest rate with RecommendItems p99 under --p99-ms")
    parser.add_argument("--p99-ms", type=float, default=10.0, help="the p99 bound of --find-max-rps")
    parser.add_argument("--step-seconds", type=int, default=15, help="length of each --find-max-rps run")
    parser.add_argument("--max-pace", type=float, default=256.0,
                        help="the fastest pace (steps per second per user) --find-max-rps tries")
    args, extra = parser.parse_known_args()  # the rest goes to the locustfile (e.g. --think-ms)
    if args.target and not is_loopback(args.target.rsplit(":", 1)[0]):
        parser.error(f"--target: only loopback addresses may be load-tested, not {args.target!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "locust"
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stops the server too
    with tempfile.TemporaryDirectory(prefix="covisit-loadtest-") as tmp:
        if args.target:
            target, server = args.target, None
        else:
            server = Server(Path(tmp) / "data", out / "server.log", {})
            server.start()
        try:
            if server is not None:
                server.wait_serving(300.0)
                target = f"127.0.0.1:{server.port}"
            if args.find_max_rps:
                best = find_max_rps(target, args, extra, out, server and server.proc.pid)
                print(json.dumps({"max_rps_at_p99_under_ms": args.p99_ms, "users": args.users, **(best or {})}))
                return 0 if best else 1
            code, window = run_locust(target, args, args.seconds, prefix, extra, server and server.proc.pid)
        finally:
            if server is not None:
                server.stop()
    stats = read_stats(prefix, window.get("seconds", args.seconds))
    print(summary(stats))
    recommend = stats.get("RecommendItems", {})
    verdict = {"users": args.users, "seconds": args.seconds, "rps": stats.get("Aggregated", {}).get("rps", 0.0),
               "recommend_rps": recommend.get("rps", 0.0), "recommend_p95_ms": recommend.get("p95_ms"),
               "slo_p95_ms": args.slo_p95_ms, "failures": stats.get("Aggregated", {}).get("failures", 0.0),
               "report": str(prefix) + ".html", "window_seconds": window.get("seconds"),
               **cpu_figures(window, stats.get("Aggregated", {}).get("requests", 0.0))}
    if "server_cores" in verdict:
        print(f"CPU: the server used {verdict['server_cores']:.2f} cores, {verdict['server_cpu_ms_per_call']:.3f} ms "
              f"a call; the machine was {verdict['machine_cores_busy']:.2f} of {os.cpu_count()} cores busy "
              f"(the rest is mostly the load generator)")
    print(json.dumps(verdict))
    problems = judge(stats, code, args.slo_p95_ms)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def judge(stats: dict[str, dict[str, float]], locust_code: int, slo_p95_ms: float) -> list[str]:
    """What fails the run: no RecommendItems at all, any failed request, or its p95 above the SLO."""
    recommend = stats.get("RecommendItems")
    if not recommend:
        return ["no RecommendItems call was made"]
    problems = []
    failures = stats.get("Aggregated", recommend)["failures"]
    if failures or locust_code != 0:
        problems.append(f"{failures:.0f} requests failed (locust exit code {locust_code})")
    if recommend["p95_ms"] > slo_p95_ms:
        problems.append(f"RecommendItems p95 {recommend['p95_ms']:.0f} ms is above the SLO ({slo_p95_ms:g} ms)")
    return problems


if __name__ == "__main__":
    sys.exit(main())

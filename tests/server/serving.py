"""Shared helpers for tests that run the real server: a small events file, start and wait.

Like ``start`` in test_grpc.py, but the directory is given (so module-scoped fixtures can use
``tmp_path_factory``) and the health probe can go over TLS.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from covisit.server.app import create_server
from covisit.server.cli import main
from covisit.server.config import load_config

TOKEN = "s3cret-admin-token"
NOW = time.time()


def write_events(path: Path) -> int:
    """60 sessions walk a -> b -> c -> d (every 3rd continues to e); x is seen alone and often.
    Returns the number of events written."""
    n = 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "event_type", "timestamp", "session_id"])
        t = NOW - 86400
        for s in range(60):
            for item in "abcd" + ("e" if s % 3 == 0 else ""):
                t += 1
                w.writerow([f"u{s}", item, "view", t, f"s{s}"])
                n += 1
        for s in range(100):
            t += 1
            w.writerow([f"p{s}", "x", "purchase", t, f"p{s}"])
            n += 1
    return n


def free_port() -> int:
    """A loopback port free right now (for a server process, whose CLI does not report the
    port it bound when given 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(directory: Path, *, probe_credentials: grpc.ChannelCredentials | None = None,
          probe_host: str = "127.0.0.1", token: str = TOKEN, **overrides):
    """Start the server on a free loopback port over a small events file in `directory`; wait
    until health says SERVING. `overrides` are dotted config keys ("server.tls_cert": ...).
    The health probe uses `probe_credentials` (TLS) if given. Returns (server, port)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    events = directory / "events.csv"
    write_events(events)
    settings = {"server.port": 0, "server.data": str(events), "server.preset": "",
                "server.data_dir": str(directory / "data"), "server.max_workers": 4,
                "exploration.rate": 0.0, "monitor.metrics_port": 0, **overrides}
    config = load_config(None, {"COVISIT_ADMIN_TOKEN": token}, settings)
    server, port = create_server(config)
    try:
        wait_serving(f"{probe_host}:{port}", probe_credentials)
    except BaseException:
        server.stop(0)
        raise
    return server, port


def wait_serving(target: str, credentials: grpc.ChannelCredentials | None = None, timeout: float = 60) -> None:
    channel = (grpc.secure_channel(target, credentials) if credentials is not None
               else grpc.insecure_channel(target))
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            except grpc.RpcError as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"health check of {target} kept failing: {exc}") from None
                status = None
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            assert time.monotonic() < deadline, f"the model never loaded (health {status})"
            time.sleep(0.05)


def eventually(probe, timeout: float = 10.0, interval: float = 0.02):
    """Poll `probe()` until it returns something truthy (returned), or fail after `timeout`:
    the server learns events in the background, within about a second."""
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        assert time.monotonic() < deadline, f"{probe} stayed falsy for {timeout}s"
        time.sleep(interval)
    return result


def run(capsys, *argv):
    """`covisit` main(argv) -> (exit code, stdout lines, stderr)."""
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def fields(lines):
    """"name=value" output lines as a dict."""
    return dict(line.split("=", 1) for line in lines)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of a server's metrics endpoint: (name, sorted label pairs) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def launch_replica(directory: Path, port: int, urls: list[str], stream: str, name: str = "",
                   settings: dict[str, str] | None = None) -> subprocess.Popen:
    """`covisit serve` as a replica process on the shared JetStream stream (R3) at `urls`,
    logging to directory/serve.log. `settings`: more COVISIT_* environment variables."""
    directory.mkdir(parents=True, exist_ok=True)
    events = directory / "events.csv"
    write_events(events)
    env = {**os.environ, "COVISIT_ADMIN_TOKEN": TOKEN, "COVISIT_EXPLORATION_RATE": "0",
           "COVISIT_SERVER_EVENT_LOG_STREAM": stream, **(settings or {})}
    with open(directory / "serve.log", "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "covisit.server.cli", "-q", "serve", "--port", str(port), "--preset", "",
             "--data", str(events), "--data-dir", str(directory / "data"), "--no-metrics",
             "--event-log", ",".join(urls), "--event-log-replicas", "3", *(["--replica-name", name] if name else [])],
            env=env, stdout=out, stderr=subprocess.STDOUT)

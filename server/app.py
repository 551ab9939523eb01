"""Assemble and run the gRPC server: services, health, reflection, TLS, model loading."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from covisit.core.catalog import Catalog, catalog_from_diginetica, catalog_from_online_retail, read_catalog_csv
from covisit.core.datasets import read_events_file, read_preset
from covisit.core.engine import Engine
from covisit.core.eventlog import LocalEventLog
from covisit.core.snapshot import Snapshot, SnapshotError
from covisit.server.config import Config, ConfigError
from covisit.server.interceptor import Latencies, ServiceInterceptor
from covisit.server.service import AdminServicer, FeedbackServicer, RecommendServicer
from covisit.v1 import admin_pb2, admin_pb2_grpc, feedback_pb2, feedback_pb2_grpc
from covisit.v1 import recommend_pb2, recommend_pb2_grpc

log = logging.getLogger(__name__)
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


def load_model(config: Config, engine: Engine, on_serving=lambda: None) -> None:
    """The startup model. A snapshot saved by an earlier start from the same data file and
    settings serves at once (on_serving is called then); the events are still read and counted
    afterwards, since later events update those counts. Otherwise the model is built from the
    events, serves, and is saved for the next start."""
    s = config.server
    source = {"preset": s.preset, "sha256": _fingerprint(Path(s.data))}
    saved_dir = Path(s.data_dir) / "snapshot"
    try:
        saved = Snapshot.load(saved_dir)
        if saved.meta.get("source") == source and saved.config == engine.model_config:
            engine.serve_saved(saved)
            on_serving()
        else:
            log.info("saved snapshot in %s is for other data or settings; rebuilding", saved_dir)
            saved = None
    except SnapshotError as exc:
        saved = None
        log.info("no usable saved snapshot (%s); building", exc)
    report = read_preset(s.preset, s.data) if s.preset else read_events_file(s.data)
    events = sorted(report.events, key=lambda e: e.timestamp)
    if engine.event_log is not None:  # then every event recorded since, in log order
        events += [event for _, event in engine.event_log.read(0)]
    engine.load(events)
    preset_catalog = CATALOG_PRESETS.get(s.preset)
    if preset_catalog and not s.catalog:  # metadata for the CONTENT fallback of cold items
        engine.catalog.upsert(preset_catalog(s.data))
    if saved is None:
        engine.snapshot.meta["source"] = source
        engine.snapshot.save(saved_dir)
        log.info("saved the model to %s", saved_dir)
        on_serving()


def _credentials(s) -> grpc.ServerCredentials | None:
    if not s.tls_cert:
        return None
    pair = (Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())
    client_ca = Path(s.tls_client_ca).read_bytes() if s.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


class CovisitServer:
    """The running gRPC server; stopping it also closes the event log, once requests are done."""

    def __init__(self, server: grpc.Server, engine: Engine):
        self._server, self.engine = server, engine

    def stop(self, grace: float | None) -> threading.Event:
        self._server.stop(grace).wait()
        if self.engine.event_log is not None:
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
        engine = Engine(config.model, limits=config.limits, cache=config.cache, history=config.history,
                        exploration=config.exploration, catalog=catalog,
                        log=LocalEventLog(Path(s.data_dir) / "events"))
    latencies = Latencies()
    options = [("grpc.max_receive_message_length", s.max_message_bytes),
               ("grpc.max_send_message_length", s.max_message_bytes),
               # grpcio shares ports by default: a second server on a taken port would silently
               # get half the traffic (with its own model and log); make that a start error
               ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=s.max_workers), options=options,
                         interceptors=[ServiceInterceptor(s.admin_token, s.insecure_admin, latencies)])
    recommend_pb2_grpc.add_RecommendServiceServicer_to_server(RecommendServicer(engine), server)
    feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(FeedbackServicer(engine), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(engine, config.summary(), latencies), server)
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
        if engine.event_log is not None:
            engine.event_log.close()  # free the log's lock for the next attempt
        raise OSError(f"cannot bind {address}")

    def set_health(status) -> None:
        for name in ("", *SERVICES):
            health_servicer.set(name, status)

    set_health(health_pb2.HealthCheckResponse.SERVING if engine.ready else health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    if load and not engine.ready:
        def loader() -> None:
            try:
                load_model(config, engine, lambda: set_health(health_pb2.HealthCheckResponse.SERVING))
            except Exception:
                log.exception("loading the model failed; the server stays NOT_SERVING")
        threading.Thread(target=loader, name="covisit-load", daemon=True).start()
    log.info("covisit serving on %s (%s)", f"{s.host}:{port}", "TLS" if credentials else "plaintext")
    return CovisitServer(server, engine), port


def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    server, _ = create_server(config)
    stopped = threading.Event()

    def stop(signum, frame) -> None:
        log.info("signal %d: stopping (grace %.1fs)", signum, config.server.grace_seconds)
        server.stop(config.server.grace_seconds)
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopped.wait(0.5):  # wake up now and then so signals are handled promptly
        pass

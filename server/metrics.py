"""Prometheus metrics (`covisit_*`), the SLO checks of GetStatus, and the thread that raises and
clears the monitor's alerts.

Events on the request path (RPCs, fsyncs, builds, swaps) update counters and histograms as they
happen; everything else is read from the engine when Prometheus scrapes, so an idle server does
no monitoring work at all.
"""

from __future__ import annotations

import logging
import threading
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from covisit.core.engine import Engine
from covisit.core.checkpoints import STATES
from covisit.server.interceptor import Latencies

log = logging.getLogger(__name__)
RECOMMEND_METHOD = "/covisit.v1.RecommendService/RecommendItems"
# Fine below 1 ms, where a covisit request spends its time, and up to the 50 ms SLO and beyond.
LATENCY_BUCKETS = (0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
                   0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BUILD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
ALERT_KINDS = ("ctr_drop", "drift", "freshness", "latency", "auto_rollback", "learner")
WATCHED = ("ctr_drop", "drift", "freshness", "latency")  # raised and cleared by AlertWatcher


class SloCheck(NamedTuple):
    name: str
    value: float
    target: float
    ok: bool
    description: str


def slo_checks(engine: Engine, latencies: Latencies, settings, cache_enabled: bool) -> list[SloCheck]:
    """The original design's service levels, measured now: RecommendItems p95 (the handler's,
    last 10,000 calls), how long logged events have waited to be learned, and the cache hit rate
    (only when the cache is on)."""
    p95_ms = latencies.percentiles(RECOMMEND_METHOD, (95,))[0] * 1e3
    waited = engine.learner.waited_seconds()
    checks = [
        SloCheck("latency_p95_ms", p95_ms, settings.slo_latency_p95_ms, p95_ms < settings.slo_latency_p95_ms,
                 "RecommendItems handler p95 over the last 10,000 calls, ms"),
        SloCheck("freshness_seconds", waited, settings.slo_freshness_seconds, waited < settings.slo_freshness_seconds,
                 "how long logged events have waited to reach the served model, s"),
    ]
    if cache_enabled:
        c = engine.counters
        rate = c["cache_hits"] / c["recommend_requests"] if c["recommend_requests"] else 1.0
        checks.append(SloCheck("cache_hit_rate", rate, settings.slo_cache_hit_rate, rate > settings.slo_cache_hit_rate,
                               "share of RecommendItems answered from the cache since start"))
    return checks


class ServerMetrics:
    """The server's registry: request-path counters and histograms, plus engine state read at
    scrape time. `settings` is the [monitor] section."""

    def __init__(self, engine: Engine, latencies: Latencies, settings, cache_enabled: bool):
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpcs = Counter("covisit_rpc_requests", "RPCs answered, by method and status code",
                            ["method", "code"], registry=r)
        self.rpc_seconds = Histogram("covisit_rpc_latency_seconds", "RPC handler latency", ["method"],
                                     buckets=LATENCY_BUCKETS, registry=r)
        fsync = Histogram("covisit_log_fsync_seconds", "Event log fdatasync duration",
                          buckets=LATENCY_BUCKETS, registry=r)
        build = Histogram("covisit_model_build_seconds", "Snapshot build duration, by kind", ["kind"],
                          buckets=BUILD_BUCKETS, registry=r)
        swap = Histogram("covisit_model_swap_seconds", "From a built snapshot to serving it",
                         buckets=LATENCY_BUCKETS, registry=r)
        engine.learner.on_build = lambda kind, seconds: build.labels(kind).observe(seconds)
        engine.learner.on_swap = swap.observe
        if hasattr(engine.event_log, "on_fsync"):
            engine.event_log.on_fsync = fsync.observe
        r.register(_EngineCollector(engine, latencies, settings, cache_enabled))
        self._http = None

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        name = method.rsplit("/", 1)[-1]
        self.rpcs.labels(name, code).inc()
        self.rpc_seconds.labels(name).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP; returns the port bound."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


class _EngineCollector(Collector):
    def __init__(self, engine: Engine, latencies: Latencies, settings, cache_enabled: bool):
        self.engine, self.latencies, self.settings, self.cache_enabled = engine, latencies, settings, cache_enabled

    def collect(self):
        engine = self.engine
        yield from self._counters(engine)
        serving = engine.learner.serving
        if serving is not None:
            yield from self._model(engine, serving)
        yield from self._relevance(engine)
        if serving is not None:
            yield from self._exposure(engine, serving.n_items)
        yield from self._alerts(engine)

    def _counters(self, engine: Engine):
        c = dict(engine.counters)
        for name, help_text in (("recommend_requests", "RecommendItems answered"),
                                ("cache_hits", "RecommendItems answered from the cache"),
                                ("events_accepted", "Events accepted (durable)"),
                                ("auto_rollbacks", "Automatic rollbacks")):
            yield CounterMetricFamily(f"covisit_{name}", help_text, value=c[name])
        yield CounterMetricFamily("covisit_cache_misses", "RecommendItems scored (not from the cache)",
                                  value=c["recommend_requests"] - c["cache_hits"])
        yield GaugeMetricFamily("covisit_cache_hit_ratio", "Cache hits / RecommendItems since start",
                                value=c["cache_hits"] / c["recommend_requests"] if c["recommend_requests"] else 0.0)
        rejected = CounterMetricFamily("covisit_events_rejected", "Events rejected, by the field at fault",
                                       labels=["reason"])
        for field, n in sorted(dict(engine.rejected_by_field).items()):
            rejected.add_metric([field], n)
        yield rejected
        size = getattr(engine.event_log, "size_bytes", None)
        if size is not None:
            yield GaugeMetricFamily("covisit_log_bytes", "Bytes in the event log's segment files", value=size)
        yield GaugeMetricFamily("covisit_log_events", "Events in the durable log", value=engine.event_log.durable_offset)

    def _model(self, engine: Engine, serving):
        learner = engine.learner
        info = InfoMetricFamily("covisit_model", "The serving model version")
        info.add_metric([], {"version": str(serving.version), "line": str(serving.meta.get("line", serving.version)),
                             "pinned": "" if learner.pinned is None else str(learner.pinned)})
        yield info
        yield GaugeMetricFamily("covisit_model_version", "The serving version number", value=serving.version)
        states = GaugeMetricFamily("covisit_model_versions", "Kept model versions, by state", labels=["state"])
        counts = dict.fromkeys(("BUILDING", *STATES), 0)
        for v in engine.versions():
            counts[v.state] = counts.get(v.state, 0) + 1
        for state, n in counts.items():
            states.add_metric([state], n)
        yield states
        yield CounterMetricFamily("covisit_model_publishes", "Snapshots published", value=learner.publishes)
        newest = serving.meta.get("newest_event")
        yield GaugeMetricFamily("covisit_model_freshness_seconds",
                                "Age of the newest event the served model reflects",
                                value=max(0.0, engine.clock() - newest) if newest else 0.0)
        yield GaugeMetricFamily("covisit_model_waiting_seconds",
                                "How long logged events have waited to be learned (0: none wait)",
                                value=learner.waited_seconds())
        yield GaugeMetricFamily("covisit_events_pending", "Logged events not yet in the served model",
                                value=learner.pending())
        yield GaugeMetricFamily("covisit_model_items", "Items the serving model knows", value=serving.n_items)
        yield GaugeMetricFamily("covisit_model_links", "Links in the serving model", value=serving.n_links)

    def _relevance(self, engine: Engine):
        labels = ["version", "arm"]
        impressions = CounterMetricFamily("covisit_impressions", "Items shown, by model line and arm", labels=labels)
        clicks = CounterMetricFamily("covisit_clicks", "Clicks, by model line and arm", labels=labels)
        ctr = GaugeMetricFamily("covisit_ctr", "Clicks / impressions, by model line and arm", labels=labels)
        for line, arm, shown, clicked in engine.monitor.feedback():
            impressions.add_metric([str(line), arm], shown)
            clicks.add_metric([str(line), arm], clicked)
            ctr.add_metric([str(line), arm], clicked / shown if shown else 0.0)
        yield from (impressions, clicks, ctr)
        yield GaugeMetricFamily("covisit_hit_rate",
                                "Share of the newest requests with impressions that got a click",
                                value=engine.monitor.hits.rate)
        recent, baseline, _, _ = engine.monitor.ctr_drift.figures()
        yield GaugeMetricFamily("covisit_ctr_recent", "CTR over the drift window", value=recent)
        yield GaugeMetricFamily("covisit_ctr_baseline", "CTR over the trailing baseline before it", value=baseline)
        divergence = engine.monitor.item_drift.divergence()
        if divergence is not None:
            yield GaugeMetricFamily("covisit_item_drift_js",
                                    "Jensen-Shannon divergence of recent vs trailing event items (bits)",
                                    value=divergence)

    def _exposure(self, engine: Engine, n_items: int):
        st = engine.monitor.exposure_stats(n_items)
        yield GaugeMetricFamily("covisit_exposure_responses", "Responses in the exposure window", value=st.responses)
        yield GaugeMetricFamily("covisit_exposure_coverage", "Distinct items shown / items known",
                                value=st.coverage)
        yield GaugeMetricFamily("covisit_exposure_gini", "Gini coefficient of exposure over known items",
                                value=st.gini)
        yield GaugeMetricFamily("covisit_exposure_entropy_bits", "Entropy of exposure, bits", value=st.entropy_bits)
        shares = GaugeMetricFamily("covisit_exposure_source_share", "Share of slots by source", labels=["source"])
        for source, share in st.source_shares.items():
            shares.add_metric([source], share)
        yield shares

    def _alerts(self, engine: Engine):
        gauge = GaugeMetricFamily("covisit_alert", "1 while an alert of this kind is raised", labels=["kind"])
        raised = {kind for kind, _, _ in engine.status_alerts()}
        for kind in ALERT_KINDS:
            gauge.add_metric([kind], 1.0 if kind in raised else 0.0)
        yield gauge
        for check in slo_checks(engine, self.latencies, self.settings, self.cache_enabled):
            yield GaugeMetricFamily(f"covisit_slo_{check.name}_ok", check.description, value=float(check.ok))


class AlertWatcher:
    """Every `settings.check_seconds`, raises or clears the alerts kinds in WATCHED: CTR drop
    and item drift (the monitor's), latency and freshness (missed SLOs). Logs each change."""

    def __init__(self, engine: Engine, latencies: Latencies, settings, cache_enabled: bool):
        self.engine, self.latencies, self.settings, self.cache_enabled = engine, latencies, settings, cache_enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="covisit-alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.check_seconds):
            try:
                self.check()
            except Exception:
                log.exception("checking alerts failed")

    def check(self) -> None:
        engine = self.engine
        if engine.learner.serving is None:
            return
        now = {**engine.monitor.drift_alerts()}
        for c in slo_checks(engine, self.latencies, self.settings, self.cache_enabled):
            if not c.ok and c.name != "cache_hit_rate":  # the cache rate is reported, not alerted
                kind = "latency" if c.name == "latency_p95_ms" else "freshness"
                now[kind] = f"{c.name} {c.value:.3g} misses the SLO ({c.target:g}): {c.description}"
        for kind in WATCHED:
            if kind in now and kind not in engine.alerts:
                engine.alerts[kind] = (now[kind], engine.clock())
                log.warning("alert %s: %s", kind, now[kind])
            elif kind not in now and kind in engine.alerts:
                del engine.alerts[kind]
                log.info("alert %s cleared", kind)

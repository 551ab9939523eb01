"""Server settings: one typed tree with defaults in code, read once at start-up.

Layers, later ones winning: the defaults below, a TOML file (sections ``[server]``, ``[limits]``,
``[cache]``, ``[history]``, ``[exploration]``, ``[learning]``, ``[monitor]``, ``[model]`` and
``[model.event_weights]``), environment variables ``COVISIT_<SECTION>_<FIELD>``
(``COVISIT_SERVER_PORT=6000``, plus ``COVISIT_ADMIN_TOKEN`` for ``server.admin_token``), and
dotted overrides from command-line flags (``{"server.port": 0}``). A ``[model.event_weights]`` table replaces the default weights
whole: it lists every event type the server accepts. Every setting is type-checked and
range-checked as it is applied; any problem raises ``ConfigError`` naming where the value came
from and its key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field

from covisit.core.config import ModelConfig
from covisit.core.datasets import PRESETS

ENV_PREFIX = "COVISIT_"
ADMIN_TOKEN_ENV = "COVISIT_ADMIN_TOKEN"
EXPLORATION_POOLS = ("long_tail", "all")
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")
_NONE = ("", "none", "null")


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message says where it came from."""


def _int(x: object, lo: int, hi: int | None = None) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= lo and (hi is None or x <= hi)


def _num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class _Section:
    """Validation shared by the sections: `_checks()` lists (field, ok, what it must be)."""

    def __post_init__(self) -> None:
        for name, ok, expected in self._checks():
            if not ok:
                raise ValueError(f"{type(self).__name__} {name}={getattr(self, name)!r}: must be {expected}")

    def _checks(self) -> list[tuple[str, bool, str]]:
        raise NotImplementedError


@dataclass(frozen=True)
class ServerConfig(_Section):
    host: str = "127.0.0.1"
    # 0 asks the OS for a free port (tests); create_server reports the one it bound.
    port: int = 50051
    # Threads in the gRPC pool.
    max_workers: int = 16
    # Where the server keeps its model snapshots.
    data_dir: str = "build/serve"
    # How to read `data`: a preset name, or "" for a generic events file (CSV or JSONL).
    preset: str = "online-retail"
    # Events to build the first model from when data_dir holds no snapshot.
    data: str = "loadtest/data/online_retail.csv.gz"
    # Optional CSV of items to bulk-load at start ("" = none).
    catalog: str = ""
    # Token the Admin service requires; also read from COVISIT_ADMIN_TOKEN. Never logged.
    admin_token: str = ""
    # Serve admin RPCs without a token (local testing only).
    insecure_admin: bool = False
    # PEM files: certificate and key turn TLS on; a client CA also requires client certificates.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Largest gRPC message accepted or sent.
    max_message_bytes: int = 4 * 1024 * 1024
    # Seconds in-flight calls get to finish on shutdown.
    grace_seconds: float = 5.0
    # Let several server processes bind this one port (SO_REUSEPORT; the kernel spreads
    # connections between them), for replicas serving one model. Off, a taken port is a start
    # error, since a second server would silently take half the traffic with a model of its own.
    reuse_port: bool = False
    # Where events are logged: "" for the local log under data_dir, or the NATS URLs of a
    # JetStream cluster ("nats://h1:4222,nats://h2:4222"), whose stream every replica shares.
    event_log: str = ""
    # The JetStream stream's name and its copies (3 in a 3-node cluster: a node may die).
    event_log_stream: str = "COVISIT_EVENTS"
    event_log_replicas: int = 1
    # This replica's name in the fleet sharing the stream ("": the host's name and the process
    # id); the leader lease and the fleet state name replicas by it, so it must be unique.
    replica_name: str = ""

    def _checks(self) -> list[tuple[str, bool, str]]:
        return [
            ("host", isinstance(self.host, str) and bool(self.host), "a non-empty string"),
            ("port", _int(self.port, 0, 65535), "an integer in 0..65535"),
            ("max_workers", _int(self.max_workers, 1), "an integer >= 1"),
            ("data_dir", isinstance(self.data_dir, str) and bool(self.data_dir), "a non-empty path"),
            ("preset", self.preset == "" or self.preset in PRESETS,
             f"'' (a generic events file) or one of {sorted(PRESETS)}"),
            *((name, isinstance(getattr(self, name), str), "a string") for name in
              ("data", "catalog", "admin_token", "tls_cert", "tls_key", "tls_client_ca")),
            ("insecure_admin", isinstance(self.insecure_admin, bool), "true or false"),
            ("reuse_port", isinstance(self.reuse_port, bool), "true or false"),
            ("event_log", isinstance(self.event_log, str) and all(
                url.startswith("nats://") for url in self.event_log.split(",") if self.event_log),
             "'' (the local log) or comma-separated nats:// URLs"),
            ("event_log_stream", isinstance(self.event_log_stream, str) and self.event_log_stream.isidentifier(),
             "a stream name (letters, digits, _)"),
            ("event_log_replicas", _int(self.event_log_replicas, 1, 5), "an integer in 1..5"),
            ("replica_name", isinstance(self.replica_name, str), "a string"),
            ("max_message_bytes", _int(self.max_message_bytes, 1024, 2**31 - 1),
             "an integer in 1024..2147483647"),
            ("grace_seconds", _num(self.grace_seconds) and self.grace_seconds >= 0, "seconds >= 0"),
        ]


@dataclass(frozen=True)
class LimitsConfig(_Section):
    # Largest number of recommendations one request may ask for.
    max_k: int = 1000
    # Most context items one request may carry.
    max_context_items: int = 100
    # Most events one RecordEvents call may carry.
    max_events_per_call: int = 10_000
    # Most requests in one batch call.
    max_batch_requests: int = 100
    # Events older than this (Unix seconds; 2000-01-01) are rejected.
    min_timestamp: float = 946684800.0
    # Events more than this many seconds ahead of the server clock are rejected.
    max_future_seconds: float = 86400.0

    def _checks(self) -> list[tuple[str, bool, str]]:
        return [
            *((name, _int(getattr(self, name), 1), "an integer >= 1") for name in
              ("max_k", "max_context_items", "max_events_per_call", "max_batch_requests")),
            ("min_timestamp", _num(self.min_timestamp) and self.min_timestamp >= 0, "Unix seconds >= 0"),
            ("max_future_seconds", _num(self.max_future_seconds) and self.max_future_seconds >= 0,
             "seconds >= 0"),
        ]


@dataclass(frozen=True)
class CacheConfig(_Section):
    # How long a cached answer may be served (the original design's 5 minutes).
    ttl_seconds: float = 300.0
    max_entries: int = 100_000
    enabled: bool = True

    def _checks(self) -> list[tuple[str, bool, str]]:
        return [
            ("ttl_seconds", _num(self.ttl_seconds) and self.ttl_seconds > 0, "seconds > 0"),
            ("max_entries", _int(self.max_entries, 1), "an integer >= 1"),
            ("enabled", isinstance(self.enabled, bool), "true or false"),
        ]


@dataclass(frozen=True)
class HistoryConfig(_Section):
    # Users whose recent items are remembered (least recently seen are dropped first).
    max_users: int = 1_000_000
    # Newest items remembered per user.
    max_items_per_user: int = 50

    def _checks(self) -> list[tuple[str, bool, str]]:
        return [(name, _int(getattr(self, name), 1), "an integer >= 1")
                for name in ("max_users", "max_items_per_user")]


@dataclass(frozen=True)
class ExplorationConfig(_Section):
    # Share of requests that get one exploration slot (0 = never, 1 = every request).
    rate: float = 0.1
    # Seed of the exploration random generator; None seeds it from the OS.
    seed: int | None = None
    # Where the explored item is drawn from: "long_tail" or "all" known items.
    pool: str = "long_tail"
    # With pool="long_tail": rank the n known items by popularity, most popular first; the
    # first floor((1 - long_tail_fraction) * n) form the head and are never explored, the rest
    # (the long_tail_fraction least popular items) form the pool. 0.8 leaves out the top 20%;
    # 1.0 makes the pool every item. Ignored with pool="all".
    long_tail_fraction: float = 0.8

    def _checks(self) -> list[tuple[str, bool, str]]:
        return [
            ("rate", _num(self.rate) and 0 <= self.rate <= 1, "a number in [0, 1]"),
            ("seed", self.seed is None or _int(self.seed, 0), "an integer >= 0 or none"),
            ("pool", self.pool in EXPLORATION_POOLS, f"one of {list(EXPLORATION_POOLS)}"),
            ("long_tail_fraction", _num(self.long_tail_fraction) and 0 < self.long_tail_fraction <= 1,
             "a number in (0, 1]"),
        ]


FSYNC_POLICIES = ("always", "interval")


@dataclass(frozen=True)
class LearningConfig(_Section):
    # Publish a new serving snapshot once this many logged events wait to be learned ...
    min_events: int = 50
    # ... or once the oldest of them has waited this long ...
    max_delay_seconds: float = 1.0
    # ... but no sooner than this after the last publish began: under heavy writes, fewer and
    # larger publishes leave the cores to requests (freshness stays within this plus a build).
    min_publish_interval_seconds: float = 0.2
    # Re-prune the whole model from its exact counts and checkpoint it this often.
    full_rebuild_seconds: float = 3600.0
    # A full rebuild also starts when the serving line's CTR over its window falls below this.
    ctr_floor: float = 0.05
    # Checkpoints kept on disk (the log before the oldest one is deleted).
    checkpoints_kept: int = 10
    # "always": RecordEvents returns after an fsync covering its events (concurrent calls share
    # one). "interval": fsync every fsync_interval_ms; a power loss can lose that much.
    fsync: str = "always"
    fsync_interval_ms: float = 50.0
    # The quality gate: a candidate must score next-item HR@gate_k on gate_events held-out
    # predictions no more than gate_tolerance (relative) below the serving version.
    gate_enabled: bool = True
    gate_events: int = 1000
    gate_k: int = 20
    gate_tolerance: float = 0.1
    # Impressions per model line in the CTR window that auto-rollback compares.
    feedback_window: int = 1000
    # Roll back when the serving line's window CTR is this much (relative) below the previous one's.
    auto_rollback: bool = True
    auto_rollback_drop: float = 0.2

    def _checks(self) -> list[tuple[str, bool, str]]:
        def share(x: object) -> bool:
            return _num(x) and 0 <= x <= 1
        return [
            *((name, _int(getattr(self, name), 1), "an integer >= 1") for name in
              ("min_events", "checkpoints_kept", "gate_events", "gate_k", "feedback_window")),
            *((name, _num(getattr(self, name)) and getattr(self, name) > 0, "seconds > 0") for name in
              ("max_delay_seconds", "full_rebuild_seconds")),
            ("fsync_interval_ms", _num(self.fsync_interval_ms) and self.fsync_interval_ms > 0, "milliseconds > 0"),
            ("min_publish_interval_seconds", _num(self.min_publish_interval_seconds)
             and self.min_publish_interval_seconds >= 0, "seconds >= 0"),
            ("fsync", self.fsync in FSYNC_POLICIES, f"one of {list(FSYNC_POLICIES)}"),
            *((name, share(getattr(self, name)), "a number in [0, 1]") for name in
              ("ctr_floor", "gate_tolerance", "auto_rollback_drop")),
            *((name, isinstance(getattr(self, name), bool), "true or false") for name in
              ("gate_enabled", "auto_rollback")),
        ]


@dataclass(frozen=True)
class MonitorConfig(_Section):
    # Prometheus metrics over HTTP at http://metrics_host:metrics_port/metrics (0: any free port).
    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    # Exposure (coverage, Gini, entropy, source shares) and hit rate over the newest responses.
    exposure_window: int = 10_000
    # CTR drift: CTR over the last ctr_window_seconds vs the ctr_baseline_seconds before it (the
    # original design's weekly trend); an alert once it is ctr_drop (relative) below, when both
    # hold at least ctr_min_impressions.
    ctr_window_seconds: float = 3600.0
    ctr_baseline_seconds: float = 7 * 86400.0
    ctr_drop: float = 0.2
    ctr_min_impressions: int = 1000
    # ... and as many standard deviations of hourly CTR as this deep (chance dips are not alerts).
    ctr_min_z: float = 3.0
    # Item drift: Jensen-Shannon divergence (bits) of the newest drift_window events' items vs
    # the drift_baseline events before them; an alert above drift_threshold.
    drift_window: int = 10_000
    drift_baseline: int = 50_000
    drift_threshold: float = 0.2
    # SLOs reported in GetStatus (alerts fire when latency or freshness miss them).
    slo_latency_p95_ms: float = 50.0
    slo_freshness_seconds: float = 3600.0
    slo_cache_hit_rate: float = 0.8
    # How often alerts are evaluated.
    check_seconds: float = 5.0
    # A rotating JSONL log of responses, impressions and clicks ("" = <data_dir>/predictions).
    prediction_log: bool = True
    prediction_log_dir: str = ""
    prediction_log_sample_rate: float = 1.0
    prediction_log_file_mb: int = 64
    prediction_log_files: int = 8

    def _checks(self) -> list[tuple[str, bool, str]]:
        return [
            *((name, isinstance(getattr(self, name), bool), "true or false") for name in
              ("metrics_enabled", "prediction_log")),
            ("metrics_host", isinstance(self.metrics_host, str) and bool(self.metrics_host), "a non-empty string"),
            ("metrics_port", _int(self.metrics_port, 0, 65535), "an integer in 0..65535"),
            *((name, _int(getattr(self, name), 1), "an integer >= 1") for name in
              ("exposure_window", "ctr_min_impressions", "drift_window", "drift_baseline",
               "prediction_log_file_mb", "prediction_log_files")),
            *((name, _num(getattr(self, name)) and getattr(self, name) > 0, "a number > 0") for name in
              ("ctr_window_seconds", "ctr_baseline_seconds", "slo_latency_p95_ms", "slo_freshness_seconds",
               "check_seconds")),
            *((name, _num(getattr(self, name)) and 0 <= getattr(self, name) <= 1, "a number in [0, 1]")
              for name in ("ctr_drop", "drift_threshold", "slo_cache_hit_rate", "prediction_log_sample_rate")),
            ("prediction_log_dir", isinstance(self.prediction_log_dir, str), "a string"),
            ("ctr_min_z", _num(self.ctr_min_z) and self.ctr_min_z >= 0, "a number >= 0"),
        ]


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        s = self.server
        if bool(s.tls_cert) != bool(s.tls_key):
            raise ValueError("server.tls_cert and server.tls_key: set both or neither")
        if s.tls_client_ca and not s.tls_cert:
            raise ValueError("server.tls_client_ca: needs server.tls_cert and server.tls_key")

    def summary(self) -> dict[str, str]:
        """Flat "section.key" -> text for status reports; the admin token shows only as set/unset."""
        out: dict[str, str] = {}
        for section in SECTIONS:
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                if section == "server" and key == "admin_token":
                    out["server.admin_token"] = "set" if value else "unset"
                elif isinstance(value, dict):
                    out.update({f"{section}.{key}.{k}": str(v) for k, v in value.items()})
                else:
                    out[f"{section}.{key}"] = str(value)
        return out


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}


def load_config(path: str | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, object] | None = None) -> Config:
    """Defaults, then the TOML file at `path`, then `env` (os.environ if None), then `overrides`."""
    sections = {name: cls() for name, cls in SECTIONS.items()}
    origin: dict[str, str] = {}  # "section.key" -> where its current value came from

    def apply(section: str, key: str, value: object, where: str, text: bool) -> None:
        if section not in sections:
            raise ConfigError(f"{where}: unknown section {section!r}; known: {', '.join(SECTIONS)}")
        hints = typing.get_type_hints(SECTIONS[section])
        names = [f.name for f in dataclasses.fields(SECTIONS[section])]
        if key not in names:
            raise ConfigError(f"{where}: unknown setting; [{section}] has {', '.join(names)}")
        value = _convert(value, hints[key], text, where)
        try:
            sections[section] = dataclasses.replace(sections[section], **{key: value})
        except ValueError as exc:
            reason = str(exc)
            head = f"{key}={value!r}: "
            if head in reason:
                reason = reason.split(head, 1)[1]
            raise ConfigError(f"{where}: {reason}, got {value!r}") from None
        origin[f"{section}.{key}"] = where

    if path is not None:
        for section, table in _read_toml(path).items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: {section}: expected a [section] table, got {table!r}")
            for key, value in table.items():
                apply(section, key, value, f"{path}: [{section}] {key}", text=False)

    env = os.environ if env is None else env
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        if name == ADMIN_TOKEN_ENV:
            if f"{ENV_PREFIX}SERVER_ADMIN_TOKEN" in env:
                raise ConfigError(f"{name}: also set as {ENV_PREFIX}SERVER_ADMIN_TOKEN; set only one")
            section, key = "server", "admin_token"
        else:
            section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        apply(section, key, env[name], name, text=True)

    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        apply(section, key, value, f"override {dotted}", text=isinstance(value, str))

    try:
        return Config(**sections)
    except ValueError as exc:
        places = sorted({where for key, where in origin.items() if key in str(exc)}) or ["config"]
        raise ConfigError(f"{', '.join(places)}: {exc}") from None


def _read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _convert(value: object, hint: object, text: bool, where: str) -> object:
    """`value` as the field type `hint`; `text` values (environment, flags) are parsed from strings."""
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if value is None or (text and str(value).strip().lower() in _NONE):
            return None
    if typing.get_origin(hint) is dict:
        if text:
            raise ConfigError(f"{where}: a table; set it in the TOML file")
        if isinstance(value, dict) and all(isinstance(k, str) and _num(v) for k, v in value.items()):
            return {k: float(v) for k, v in value.items()}
        raise ConfigError(f"{where}: expected a table of names to numbers, got {value!r}")
    expected = _EXPECTED[hint] + (" or none" if optional else "")
    if text:
        raw = str(value).strip()
        if hint is bool:
            if raw.lower() in _TRUE + _FALSE:
                return raw.lower() in _TRUE
            raise ConfigError(f"{where}: expected one of {'/'.join(_TRUE + _FALSE)}, got {value!r}")
        if hint is str:
            return str(value)
        try:
            return hint(raw)
        except ValueError:
            raise ConfigError(f"{where}: expected {expected}, got {value!r}") from None
    if hint is float and _num(value):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}: expected {expected}, got {value!r}")

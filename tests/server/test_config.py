"""Tests for the server config tree: defaults, TOML, environment and override layers, errors."""

import dataclasses
import re

import pytest

from covisit.core.config import ModelConfig
from covisit.core.events import DEFAULT_EVENT_WEIGHTS
from covisit.server.config import (
    CacheConfig,
    Config,
    ConfigError,
    ExplorationConfig,
    HistoryConfig,
    LimitsConfig,
    ServerConfig,
    load_config,
)


@pytest.fixture
def toml(tmp_path):
    def write(text: str) -> str:
        path = tmp_path / "covisit.toml"
        path.write_text(text)
        return str(path)
    return write


def test_defaults():
    cfg = load_config(env={})
    assert cfg == Config()
    s = cfg.server
    assert (s.host, s.port, s.max_workers, s.data_dir) == ("127.0.0.1", 50051, 16, "build/serve")
    assert (s.preset, s.data, s.catalog) == ("online-retail", "loadtest/data/online_retail.csv.gz", "")
    assert (s.admin_token, s.insecure_admin, s.tls_cert, s.tls_key, s.tls_client_ca) == ("", False, "", "", "")
    assert (s.max_message_bytes, s.grace_seconds) == (4 * 1024 * 1024, 5.0)
    assert cfg.limits == LimitsConfig(max_k=1000, max_context_items=100, max_events_per_call=10_000,
                                      max_batch_requests=100, min_timestamp=946684800.0,
                                      max_future_seconds=86400.0)
    assert cfg.cache == CacheConfig(ttl_seconds=300.0, max_entries=100_000, enabled=True)
    assert cfg.history == HistoryConfig(max_users=1_000_000, max_items_per_user=50)
    assert cfg.exploration == ExplorationConfig(rate=0.1, seed=None, pool="long_tail", long_tail_fraction=0.8)
    assert cfg.model == ModelConfig()
    m = cfg.monitor
    assert (m.metrics_enabled, m.metrics_host, m.metrics_port) == (True, "127.0.0.1", 9464)
    assert (m.exposure_window, m.ctr_drop, m.ctr_window_seconds, m.ctr_baseline_seconds) == (10_000, 0.2, 3600.0, 604800.0)
    assert (m.slo_latency_p95_ms, m.slo_freshness_seconds, m.slo_cache_hit_rate) == (50.0, 3600.0, 0.8)
    assert (m.prediction_log, m.prediction_log_sample_rate) == (True, 1.0)


def test_sections_are_frozen():
    cfg = load_config(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.port = 1  # type: ignore[misc]


def test_toml_overrides_defaults(toml):
    path = toml("""
[server]
port = 6000
host = "0.0.0.0"
insecure_admin = true
grace_seconds = 2          # an integer is accepted for a float

[cache]
enabled = false

[exploration]
seed = 7
pool = "all"

[model]
window = 3
similarity = "cosine"

[model.event_weights]
view = 1
purchase = 4.5
""")
    cfg = load_config(path, env={})
    assert (cfg.server.port, cfg.server.host, cfg.server.insecure_admin) == (6000, "0.0.0.0", True)
    assert cfg.server.grace_seconds == 2.0 and isinstance(cfg.server.grace_seconds, float)
    assert cfg.cache.enabled is False
    assert (cfg.exploration.seed, cfg.exploration.pool) == (7, "all")
    assert (cfg.model.window, cfg.model.similarity) == (3, "cosine")
    # the table replaces the default weights whole
    assert cfg.model.event_weights == {"view": 1.0, "purchase": 4.5}
    assert all(type(w) is float for w in cfg.model.event_weights.values())
    # untouched settings keep their defaults
    assert cfg.server.max_workers == 16
    assert cfg.model.backward == ModelConfig().backward


def test_env_beats_toml(toml):
    path = toml("[server]\nport = 6000\nmax_workers = 4\n[model]\nwindow = 3\n")
    cfg = load_config(path, env={"COVISIT_SERVER_PORT": "7000", "COVISIT_MODEL_WINDOW": "5",
                                 "COVISIT_CACHE_ENABLED": "false", "PATH": "/bin", "OTHER_X": "1"})
    assert (cfg.server.port, cfg.model.window, cfg.cache.enabled) == (7000, 5, False)
    assert cfg.server.max_workers == 4  # from the file, no env var


def test_env_multi_word_field_names():
    cfg = load_config(env={"COVISIT_SERVER_MAX_WORKERS": "3", "COVISIT_LIMITS_MAX_BATCH_REQUESTS": "9",
                           "COVISIT_EXPLORATION_LONG_TAIL_FRACTION": "0.5"})
    assert (cfg.server.max_workers, cfg.limits.max_batch_requests, cfg.exploration.long_tail_fraction) == (3, 9, 0.5)


def test_overrides_beat_env(toml):
    path = toml("[server]\nport = 6000\n")
    cfg = load_config(path, env={"COVISIT_SERVER_PORT": "7000", "COVISIT_SERVER_HOST": "0.0.0.0"},
                      overrides={"server.port": 0, "model.recency": "0.5"})
    assert cfg.server.port == 0
    assert cfg.server.host == "0.0.0.0"
    assert cfg.model.recency == 0.5  # a string override is parsed like an env value


def test_real_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("COVISIT_SERVER_PORT", "6123")
    assert load_config().server.port == 6123
    assert load_config(env={}).server.port == 50051


def test_admin_token_env():
    cfg = load_config(env={"COVISIT_ADMIN_TOKEN": "s3cret"})
    assert cfg.server.admin_token == "s3cret"
    # the generic name works too, but both at once is ambiguous
    assert load_config(env={"COVISIT_SERVER_ADMIN_TOKEN": "t"}).server.admin_token == "t"
    with pytest.raises(ConfigError, match="COVISIT_ADMIN_TOKEN.*COVISIT_SERVER_ADMIN_TOKEN"):
        load_config(env={"COVISIT_ADMIN_TOKEN": "a", "COVISIT_SERVER_ADMIN_TOKEN": "b"})


def test_admin_token_env_beats_toml(toml):
    path = toml('[server]\nadmin_token = "from-file"\n')
    assert load_config(path, env={}).server.admin_token == "from-file"
    assert load_config(path, env={"COVISIT_ADMIN_TOKEN": "from-env"}).server.admin_token == "from-env"


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), (" Yes ", True),
    ("false", False), ("False", False), ("0", False), ("no", False),
])
def test_env_bool_parsing(text, expected):
    # insecure_admin defaults to False, enabled to True: both directions must move
    cfg = load_config(env={"COVISIT_SERVER_INSECURE_ADMIN": text, "COVISIT_CACHE_ENABLED": text})
    assert cfg.server.insecure_admin is expected
    assert cfg.cache.enabled is expected


@pytest.mark.parametrize("text", ["maybe", "", "2", "on"])
def test_env_bool_rejects_other_words(text):
    with pytest.raises(ConfigError, match=r"^COVISIT_CACHE_ENABLED: expected one of true/1/yes/false/0/no"):
        load_config(env={"COVISIT_CACHE_ENABLED": text})


def test_env_int_float_str_parsing():
    cfg = load_config(env={"COVISIT_SERVER_PORT": " 6001 ", "COVISIT_CACHE_TTL_SECONDS": "1.5",
                           "COVISIT_LIMITS_MAX_FUTURE_SECONDS": "60", "COVISIT_SERVER_DATA_DIR": "/srv/x",
                           "COVISIT_SERVER_PRESET": ""})
    assert cfg.server.port == 6001 and isinstance(cfg.server.port, int)
    assert cfg.cache.ttl_seconds == 1.5
    assert cfg.limits.max_future_seconds == 60.0 and isinstance(cfg.limits.max_future_seconds, float)
    assert cfg.server.data_dir == "/srv/x"
    assert cfg.server.preset == ""


@pytest.mark.parametrize("text, expected", [("42", 42), ("0", 0), ("none", None), ("", None), ("None", None)])
def test_env_optional_int(text, expected, toml):
    path = toml("[exploration]\nseed = 5\n")  # so that None is a change, not the default
    assert load_config(path, env={"COVISIT_EXPLORATION_SEED": text}).exploration.seed == expected


def test_override_optional_int_none(toml):
    path = toml("[exploration]\nseed = 5\n")
    assert load_config(path, env={}, overrides={"exploration.seed": None}).exploration.seed is None


@pytest.mark.parametrize("env, message", [
    ({"COVISIT_SERVER_PORT": "abc"}, "COVISIT_SERVER_PORT: expected an integer, got 'abc'"),
    ({"COVISIT_SERVER_PORT": "1.5"}, "COVISIT_SERVER_PORT: expected an integer, got '1.5'"),
    ({"COVISIT_CACHE_TTL_SECONDS": "soon"}, "COVISIT_CACHE_TTL_SECONDS: expected a number, got 'soon'"),
    ({"COVISIT_EXPLORATION_SEED": "x"}, "COVISIT_EXPLORATION_SEED: expected an integer or none, got 'x'"),
    ({"COVISIT_SERVER_PORT": "70000"}, "COVISIT_SERVER_PORT: must be an integer in 0..65535, got 70000"),
    ({"COVISIT_CACHE_TTL_SECONDS": "nan"}, "COVISIT_CACHE_TTL_SECONDS: must be seconds > 0, got nan"),
    ({"COVISIT_MODEL_WINDOW": "0"}, "COVISIT_MODEL_WINDOW: must be an integer in 1..1000, got 0"),
    ({"COVISIT_SERVR_PORT": "1"}, "COVISIT_SERVR_PORT: unknown section 'servr'"),
    ({"COVISIT_SERVER_PROT": "1"}, "COVISIT_SERVER_PROT: unknown setting; [server] has host, port"),
    ({"COVISIT_MODEL_EVENT_WEIGHTS": "view=1"}, "COVISIT_MODEL_EVENT_WEIGHTS: a table; set it in the TOML file"),
])
def test_env_errors_name_the_variable(env, message):
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("text, message", [
    ("[cache]\nttl_seconds = -1\n", "[cache] ttl_seconds: must be seconds > 0, got -1.0"),
    ("[server]\nport = \"6000\"\n", "[server] port: expected an integer, got '6000'"),
    ("[server]\nport = 65536\n", "[server] port: must be an integer in 0..65535, got 65536"),
    ("[server]\nport = true\n", "[server] port: expected an integer, got True"),
    ("[server]\nmax_workers = 0\n", "[server] max_workers: must be an integer >= 1, got 0"),
    ("[server]\npreset = \"nope\"\n", "[server] preset: must be '' (a generic events file) or one of"),
    ("[server]\ngrace_seconds = -0.5\n", "[server] grace_seconds: must be seconds >= 0, got -0.5"),
    ("[server]\nmax_message_bytes = 10\n", "[server] max_message_bytes: must be an integer in 1024.."),
    ("[server]\ninsecure_admin = 1\n", "[server] insecure_admin: expected true or false, got 1"),
    ("[limits]\nmax_k = 0\n", "[limits] max_k: must be an integer >= 1, got 0"),
    ("[limits]\nmin_timestamp = -1\n", "[limits] min_timestamp: must be Unix seconds >= 0, got -1.0"),
    ("[history]\nmax_items_per_user = 0\n", "[history] max_items_per_user: must be an integer >= 1, got 0"),
    ("[cache]\nmax_entries = 0\n", "[cache] max_entries: must be an integer >= 1, got 0"),
    ("[exploration]\nrate = 1.5\n", "[exploration] rate: must be a number in [0, 1], got 1.5"),
    ("[exploration]\nlong_tail_fraction = 0\n", "[exploration] long_tail_fraction: must be a number in (0, 1], got 0.0"),
    ("[exploration]\npool = \"head\"\n", "[exploration] pool: must be one of ['long_tail', 'all'], got 'head'"),
    ("[exploration]\nseed = \"none\"\n", "[exploration] seed: expected an integer or none, got 'none'"),
    ("[exploration]\nseed = -1\n", "[exploration] seed: must be an integer >= 0 or none, got -1"),
    ("[cache]\nttl = 5\n", "[cache] ttl: unknown setting; [cache] has ttl_seconds, max_entries, enabled"),
    ("[caches]\nttl_seconds = 5\n", "[caches] ttl_seconds: unknown section 'caches'"),
    ("port = 5\n", "port: expected a [section] table, got 5"),
    ("[model]\nwindow = 0\n", "[model] window: must be an integer in 1..1000, got 0"),
    ("[model]\nsimilarity = \"dice\"\n", "[model] similarity: must be one of"),
    ("[model]\nwindow = 2.0\n", "[model] window: expected an integer, got 2.0"),
    ("[model]\nbogus = 1\n", "[model] bogus: unknown setting; [model] has window, backward"),
    ("[model.event_weights]\nview = -1\n", "[model] event_weights: must be a non-empty map"),
    ("[monitor]\nmetrics_port = 70000\n", "[monitor] metrics_port: must be an integer in 0..65535, got 70000"),
    ("[monitor]\ndrift_threshold = 2\n", "[monitor] drift_threshold: must be a number in [0, 1], got 2.0"),
    ("[monitor]\nexposure_window = 0\n", "[monitor] exposure_window: must be an integer >= 1, got 0"),
    ("[monitor]\ncheck_seconds = 0\n", "[monitor] check_seconds: must be a number > 0, got 0.0"),
    ("[monitor]\nprediction_log = \"yes\"\n", "[monitor] prediction_log: expected true or false, got 'yes'"),
    ("[model.event_weights]\nview = \"x\"\n", "[model] event_weights: expected a table of names to numbers"),
    ("[model]\nevent_weights = 3\n", "[model] event_weights: expected a table of names to numbers, got 3"),
])
def test_toml_errors_name_file_section_and_key(toml, text, message):
    path = toml(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


def test_model_setting_error_names_model_window(toml):
    # ModelConfig validates itself; its ValueError comes back as a ConfigError with the source
    path = toml("[model]\nwindow = 0\n")
    with pytest.raises(ConfigError, match=r"covisit\.toml: \[model\] window: must be an integer in 1\.\.1000, got 0$"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match=r"^override model\.window: must be an integer"):
        load_config(env={}, overrides={"model.window": 0})


def test_unreadable_and_invalid_toml(tmp_path, toml):
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(missing))}: cannot read: No such file"):
        load_config(str(missing), env={})
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path))}: cannot read"):
        load_config(str(tmp_path), env={})
    bad = toml("[server\nport = 1\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(bad)}: invalid TOML: .*line 1"):
        load_config(bad, env={})


@pytest.mark.parametrize("overrides, message", [
    ({"server.port": -1}, "override server.port: must be an integer in 0..65535, got -1"),
    ({"server.port": "x"}, "override server.port: expected an integer, got 'x'"),
    ({"server.port": 1.0}, "override server.port: expected an integer, got 1.0"),
    ({"server.nope": 1}, "override server.nope: unknown setting"),
    ({"port": 1}, "override port: unknown section 'port'"),
    ({"server.event_log": "http://127.0.0.1:4222"},
     "override server.event_log: must be '' (the local log) or comma-separated nats:// URLs"),
    ({"server.event_log": "nats://127.0.0.1:4222,127.0.0.1:4223"}, "override server.event_log: must be"),
    ({"server.event_log_stream": "my stream"}, "override server.event_log_stream: must be a stream name"),
    ({"server.event_log_replicas": 0}, "override server.event_log_replicas: must be an integer in 1..5"),
])
def test_override_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(env={}, overrides=overrides)
    assert str(info.value).startswith(message), str(info.value)


def test_later_layer_does_not_excuse_an_invalid_file(toml):
    # a broken file is reported even when the environment would set the same key
    path = toml("[server]\nport = 99999\n")
    with pytest.raises(ConfigError, match=r"\[server\] port"):
        load_config(path, env={"COVISIT_SERVER_PORT": "6000"})


def test_tls_cert_and_key_go_together(toml):
    path = toml('[server]\ntls_cert = "cert.pem"\n')
    with pytest.raises(ConfigError, match=r"\[server\] tls_cert: server\.tls_cert and server\.tls_key: set both"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match=r"^COVISIT_SERVER_TLS_CLIENT_CA: server\.tls_client_ca: needs"):
        load_config(env={"COVISIT_SERVER_TLS_CLIENT_CA": "ca.pem"})
    cfg = load_config(path, env={"COVISIT_SERVER_TLS_KEY": "key.pem", "COVISIT_SERVER_TLS_CLIENT_CA": "ca.pem"})
    assert (cfg.server.tls_cert, cfg.server.tls_key, cfg.server.tls_client_ca) == ("cert.pem", "key.pem", "ca.pem")


@pytest.mark.parametrize("cls, kwargs", [
    (ServerConfig, {"port": -1}),
    (LimitsConfig, {"max_k": 0}),
    (CacheConfig, {"ttl_seconds": 0}),
    (HistoryConfig, {"max_users": 0}),
    (ExplorationConfig, {"rate": -0.1}),
])
def test_direct_construction_is_validated(cls, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        cls(**kwargs)


def test_summary_is_flat_text_and_hides_the_token():
    cfg = load_config(env={"COVISIT_ADMIN_TOKEN": "hunter2", "COVISIT_SERVER_PORT": "6000"})
    summary = cfg.summary()
    assert summary["server.admin_token"] == "set"
    assert "hunter2" not in repr(summary)
    assert summary["server.port"] == "6000"
    assert summary["cache.ttl_seconds"] == "300.0"
    assert summary["exploration.seed"] == "None"
    assert summary["model.window"] == str(ModelConfig().window)
    assert summary["model.event_weights.view"] == str(DEFAULT_EVENT_WEIGHTS["view"])
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in summary.items())
    # every setting of every section appears
    for section in ("server", "limits", "cache", "history", "exploration", "model"):
        for f in dataclasses.fields(getattr(cfg, section)):
            if f.name != "event_weights":
                assert f"{section}.{f.name}" in summary
    assert load_config(env={}).summary()["server.admin_token"] == "unset"

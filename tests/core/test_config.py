"""Tests for ModelConfig validation and its dict round trip."""

import dataclasses
import json
import math

import pytest

from covisit.core.config import DISTANCE_MODES, SIMILARITIES, ModelConfig
from covisit.core.events import DEFAULT_EVENT_WEIGHTS


def test_defaults_are_valid():
    cfg = ModelConfig()
    # the documented defaults (README, "Evaluation")
    assert (cfg.window, cfg.backward, cfg.distance, cfg.similarity, cfg.recency) == (
        2, 0.1, "inverse", "conditional", 0.3)
    assert cfg.distance in DISTANCE_MODES
    assert cfg.similarity in SIMILARITIES
    assert cfg.event_weights == DEFAULT_EVENT_WEIGHTS


def test_default_event_weights_are_not_shared():
    a, b = ModelConfig(), ModelConfig()
    assert a.event_weights is not b.event_weights
    assert a.event_weights is not DEFAULT_EVENT_WEIGHTS


@pytest.mark.parametrize("setting, value", [
    ("window", 0),
    ("window", 1001),
    ("window", 1.5),
    ("window", True),
    ("top_n", True),
    ("event_weights", {1: 1.0}),
    ("window", "5"),
    ("backward", -1),
    ("backward", math.nan),
    ("backward", math.inf),
    ("backward", "0"),
    ("distance", "x"),
    ("half_life", math.nan),
    ("half_life", -1.0),
    ("half_life", math.inf),
    ("similarity", "x"),
    ("top_n", 0),
    ("top_n", 100_001),
    ("top_n", 10.0),
    ("recency", 0),
    ("recency", 1.5),
    ("recency", -0.5),
    ("recency", math.nan),
    ("recency", True),
    ("max_context", 0),
    ("max_context", 1001),
    ("max_context", 2.0),
    ("session_gap", 0),
    ("session_gap", -5.0),
    ("session_gap", math.inf),
    ("event_weights", {}),
    ("event_weights", {"view": -1}),
    ("event_weights", {"view": 0}),
    ("event_weights", {"view": 1.0, "click": math.nan}),
    ("event_weights", {"view": True}),
    ("event_weights", {"view": "1"}),
])
def test_invalid_setting_names_itself(setting, value):
    with pytest.raises(ValueError) as info:
        ModelConfig(**{setting: value})
    assert f"{setting}=" in str(info.value)
    assert "must be" in str(info.value)


@pytest.mark.parametrize("changes", [
    {"window": 1}, {"window": 1000}, {"backward": 0.5}, {"backward": 1},
    {"distance": "none"}, {"distance": "linear"}, {"half_life": 3600},
    {"similarity": "llr"}, {"similarity": "cosine"}, {"top_n": 1}, {"top_n": 100_000},
    {"recency": 1}, {"recency": 1e-9}, {"max_context": 1}, {"session_gap": 0.5},
    {"event_weights": {"play": 0.25}}, {"exclude_context": False},
])
def test_valid_settings(changes):
    cfg = ModelConfig(**changes)
    for key, value in changes.items():
        assert getattr(cfg, key) == value


def test_dict_round_trip():
    cfg = ModelConfig(window=3, backward=0.5, distance="linear", half_life=86400.0,
                      similarity="cosine", top_n=50, recency=0.8, max_context=4,
                      exclude_context=False, session_gap=600.0,
                      event_weights={"view": 1.0, "buy": 5.0})
    d = cfg.to_dict()
    assert d["window"] == 3 and d["event_weights"] == {"view": 1.0, "buy": 5.0}
    assert ModelConfig.from_dict(d) == cfg
    # and through JSON, as a snapshot stores it
    assert ModelConfig.from_dict(json.loads(json.dumps(d))) == cfg


def test_to_dict_has_every_field():
    d = ModelConfig().to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(ModelConfig)}


def test_to_dict_does_not_share_weights():
    cfg = ModelConfig()
    cfg.to_dict()["event_weights"]["view"] = 99.0
    assert cfg.event_weights["view"] == DEFAULT_EVENT_WEIGHTS["view"]


def test_from_dict_partial_uses_defaults():
    cfg = ModelConfig.from_dict({"window": 2})
    assert cfg == dataclasses.replace(ModelConfig(), window=2)


def test_from_dict_rejects_unknown_keys_naming_them():
    with pytest.raises(ValueError) as info:
        ModelConfig.from_dict({"window": 2, "windw": 3, "zeta": 1})
    msg = str(info.value)
    assert "windw" in msg and "zeta" in msg
    assert "'window'" not in msg


def test_from_dict_validates_values():
    with pytest.raises(ValueError, match="top_n="):
        ModelConfig.from_dict({"top_n": -3})


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig().window = 3

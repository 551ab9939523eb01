"""The request engine on its own: cache expiry, bounded history, exploration, fallbacks."""

import pytest

from covisit.core import engine as engine_module
from covisit.core import kernels_topk as kt
from covisit.core.config import ModelConfig
from covisit.core.engine import Engine
from covisit.core.errors import InvalidArgument, NotFound, Unavailable
from covisit.core.events import Event
from covisit.server.config import CacheConfig, ExplorationConfig, HistoryConfig, LearningConfig, LimitsConfig

T0 = 1_700_000_000.0


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


def make_engine(clock, *, ttl=300.0, max_users=1000, items_per_user=50, rate=0.0, seed=None):
    engine = Engine(ModelConfig(), limits=LimitsConfig(), cache=CacheConfig(ttl_seconds=ttl),
                    history=HistoryConfig(max_users=max_users, max_items_per_user=items_per_user),
                    exploration=ExplorationConfig(rate=rate, seed=seed, pool="all"), learning=LearningConfig(),
                    clock=clock)
    events = [Event(f"u{s}", item, "view", T0 - 100 + i, f"s{s}")
              for s in range(20) for i, item in enumerate("abcd")]
    events += [Event("tail", item, "view", T0 - 50 + i, "t") for i, item in enumerate("efghijkl")]
    engine.load(events)
    return engine


def test_no_model_means_unavailable():
    engine = Engine(ModelConfig(), limits=LimitsConfig(), cache=CacheConfig(), history=HistoryConfig(),
                    exploration=ExplorationConfig(), learning=LearningConfig())
    assert not engine.ready
    with pytest.raises(Unavailable):
        engine.recommend(context_items=["a"])


def test_cache_answers_repeats_until_the_ttl_or_a_new_model():
    clock = Clock()
    engine = make_engine(clock, ttl=60)
    assert not engine.recommend(context_items=["a"]).from_cache
    clock.now += 59
    assert engine.recommend(context_items=["a"]).from_cache
    clock.now += 2  # past the TTL
    assert not engine.recommend(context_items=["a"]).from_cache
    engine.record_events([Event("v", "a", "view", clock.now)])
    assert engine.flush()  # a new model version
    assert not engine.recommend(context_items=["a"]).from_cache
    assert engine.counters["cache_hits"] == 1


def test_history_is_bounded_in_users_and_items():
    clock = Clock()
    engine = make_engine(clock, max_users=3, items_per_user=2)
    engine.record_events([Event("me", item, "view", clock.now) for item in "abc"])
    assert engine.recommend(user_id="me", k=1).items[0].item_id == "d"  # context (b, c): c -> d
    # the oldest users are forgotten: "me" then has no history, so popularity answers
    engine.record_events([Event(f"new{n}", "a", "view", clock.now) for n in range(3)])
    assert engine.recommend(user_id="me", k=1).items[0].source == kt.SOURCE_POPULARITY
    assert engine.status()["users"] == 3
    with pytest.raises(InvalidArgument, match="user_id"):
        engine.recommend(k=1)  # neither a user nor a context


def test_exploration_is_seeded_and_marked():
    picks = []
    for _ in range(2):
        engine = make_engine(Clock(), rate=1.0, seed=11)
        engine.cache_config = CacheConfig(enabled=False)
        picks.append([engine.recommend(context_items=["a"], k=3).items[-1] for _ in range(5)])
    assert picks[0] == picks[1]
    assert all(p.source == kt.SOURCE_EXPLORATION for p in picks[0])
    engine = make_engine(Clock(), rate=1.0, seed=11)
    assert engine.recommend(context_items=["a"], k=1).items[0].source == kt.SOURCE_COOCCURRENCE


def test_scoring_failure_falls_back_to_popularity(monkeypatch):
    engine = make_engine(Clock())
    real = engine_module.recommend
    calls = []

    def failing_once(snapshot, context, k, **kw):
        calls.append(list(context))
        if len(calls) == 1:
            raise RuntimeError("injected scoring fault")
        return real(snapshot, context, k, **kw)

    monkeypatch.setattr(engine_module, "recommend", failing_once)
    items = engine.recommend(context_items=["a"], k=2).items
    assert calls == [["a"], []]  # retried without context: popularity only
    assert [s.source for s in items] == [kt.SOURCE_POPULARITY] * 2


def test_clicks_need_a_known_request():
    engine = make_engine(Clock())
    rec = engine.recommend(context_items=["a"])
    engine.record_click(rec.request_id, "u", rec.items[0].item_id)
    with pytest.raises(NotFound):
        engine.record_click("nope", "u", "a")
    assert engine.counters["clicks"] == 1


def test_load_checks_every_event_and_logs_none_of_a_bad_batch():
    engine = make_engine(Clock())
    logged = engine.event_log.durable_offset
    with pytest.raises(InvalidArgument, match="event_type"):
        engine.load([Event("u", "a", "view", T0), Event("u", "b", "teleport", T0 + 1)])
    assert engine.event_log.durable_offset == logged

"""Continuous learning through the engine: triggers, restarts from checkpoints, the gate,
rollback and resume, A/B and shadow attribution, auto-rollback. Real files, real threads."""

import dataclasses
import os
import time

import numpy as np
import pytest

from covisit.core.config import ModelConfig
from covisit.core.engine import Engine
from covisit.core.errors import FailedPrecondition, InvalidArgument, NotFound
from covisit.core.eventlog import EventLogError, LocalEventLog
from covisit.core.events import Event
from covisit.core.experiments import in_arm
from covisit.core.model import CoVisitModel
from covisit.server.config import CacheConfig, ExplorationConfig, HistoryConfig, LearningConfig, LimitsConfig

T0 = 1_700_000_000.0


def walks(n_sessions: int, items: str = "abcd", start: int = 0, t0: float = T0) -> list[Event]:
    """Sessions that walk `items` in order: a -> b -> c -> d."""
    return [Event(f"u{s}", item, "view", t0 + s * 10 + i, f"s{s}")
            for s in range(start, start + n_sessions) for i, item in enumerate(items)]


def make_engine(directory=None, **learning) -> Engine:
    log = LocalEventLog(directory / "events") if directory is not None else None
    return Engine(ModelConfig(), limits=LimitsConfig(), cache=CacheConfig(enabled=False),
                  history=HistoryConfig(), exploration=ExplorationConfig(rate=0.0),
                  learning=LearningConfig(**learning), log=log, data_dir=directory)


@pytest.fixture
def engines():
    made = []

    def make(directory=None, **learning):
        engine = make_engine(directory, **learning)
        made.append(engine)
        return engine
    yield make
    for engine in made:
        engine.close()
        engine.event_log.close()


def counts(model_or_engine):
    model = getattr(model_or_engine, "learner", None)
    model = model._model if model is not None else model_or_engine
    n = len(model.items)
    names = [model.items.name(i) for i in range(n)]
    indptr, indices, data = model.csr()
    out = {}
    for r in range(n):
        for q in range(indptr[r], indptr[r + 1]):
            out[names[r], names[indices[q]]] = data[q]
    return out


def batch_counts(events):
    model = CoVisitModel(ModelConfig())
    model.update(events)
    return counts(model)


def test_a_few_events_serve_within_max_delay(engines):
    engine = engines(min_events=1000, max_delay_seconds=0.2)
    engine.load(walks(5))
    v = engine.snapshot.version
    engine.record_events([Event("new", "a", "view", T0 + 1000, "n"), Event("new", "z", "view", T0 + 1001, "n")])
    deadline = time.monotonic() + 5
    while engine.snapshot.version == v:
        assert time.monotonic() < deadline, "one event below min_events never published"
        time.sleep(0.01)
    assert "z" in [s.item_id for s in engine.recommend(context_items=["a"], k=10).items]
    assert engine.snapshot.meta["kind"] == "incremental"


def test_a_log_out_of_reach_at_start_delays_learning_without_stopping_it(tmp_path, engines, monkeypatch):
    first = engines(tmp_path)
    first.load(walks(20))
    first.record_events(walks(5, "abce", start=20))  # replayed after the checkpoint
    assert first.flush()
    first.close()
    first.event_log.close()
    again = engines(tmp_path)
    read, failures = again.event_log.read, []

    def unreachable(*args, **kwargs):
        if len(failures) < 2 and again.learner.started:  # the engine's own read of history passes
            failures.append(time.monotonic())
            raise EventLogError("the stream did not serve the read within 10 s")
        return read(*args, **kwargs)

    monkeypatch.setattr(again.event_log, "read", unreachable)
    again.start()
    assert again.flush(timeout=10), again.learner.error
    assert len(failures) == 2 and again.learner.state == "learning"
    assert counts(again) == batch_counts(walks(20) + walks(5, "abce", start=20))


def test_a_log_out_of_reach_pauses_learning_and_serving_goes_on(engines, monkeypatch):
    """A shared log can be unreachable for a while (a NATS outage): the learner keeps the
    model serving, tries again, and learns what was logged once the log answers."""
    engine = engines(min_events=1, max_delay_seconds=0.05)
    engine.load(walks(5))
    v = engine.snapshot.version
    log, read = engine.event_log, engine.event_log.read
    failures = []

    def unreachable(*args, **kwargs):
        if len(failures) < 2:
            failures.append(time.monotonic())
            raise EventLogError("the stream did not serve the read within 10 s")
        return read(*args, **kwargs)

    monkeypatch.setattr(log, "read", unreachable)
    engine.record_events([Event("new", "a", "view", T0 + 1000, "n"), Event("new", "z", "view", T0 + 1001, "n")])
    deadline = time.monotonic() + 10
    while engine.snapshot.version == v:
        assert time.monotonic() < deadline, "learning did not resume once the log answered"
        assert engine.learner.state != "failed", engine.learner.error
        assert engine.recommend(context_items=["a"], k=3).items  # the old model still serves
        time.sleep(0.01)
    assert len(failures) == 2 and failures[1] - failures[0] >= 0.9  # retried after a pause
    assert "z" in [s.item_id for s in engine.recommend(context_items=["a"], k=10).items]


def test_restart_serves_the_checkpoint_then_replays_the_log(tmp_path, engines):
    first = engines(tmp_path)
    first.load(walks(30))
    first.record_events(walks(10, "abce", start=30))  # after the first checkpoint
    assert first.flush()
    before = counts(first)
    checkpointed = first.learner.checkpoints.list()[0]
    first.close()
    first.event_log.close()

    second = engines(tmp_path)
    second.start()
    assert second.flush()
    assert counts(second) == before == batch_counts(walks(30) + walks(10, "abce", start=30))
    assert second.snapshot.version > checkpointed.version  # never reuses a number
    assert second.learner.state == "learning"


def test_rollback_pins_then_resume_learns_everything(tmp_path, engines):
    engine = engines(tmp_path)
    engine.load(walks(20))
    old = engine.snapshot.version
    engine.record_events(walks(5, "abx", start=20))
    assert engine.flush()
    assert engine.rollback(old)[0] == old
    engine.record_events(walks(5, "aby", start=25))  # logged durably, not learned
    time.sleep(0.3)
    assert engine.snapshot.version == old and engine.status()["pinned_version"] == old
    assert engine.status()["events_pending"] == 15
    with pytest.raises(FailedPrecondition, match="pinned"):
        engine.rebuild()
    version, applied = engine.resume_learning()
    assert version > old and applied == 15
    assert engine.status()["pinned_version"] is None
    assert counts(engine) == batch_counts(walks(20) + walks(5, "abx", start=20) + walks(5, "aby", start=25))


def test_a_pin_survives_a_restart(tmp_path, engines):
    engine = engines(tmp_path)
    engine.load(walks(20))
    pinned = engine.snapshot.version
    engine.record_events(walks(5, start=20))
    assert engine.flush()
    engine.rollback(pinned)
    engine.close()
    engine.event_log.close()
    again = engines(tmp_path)
    again.start()
    deadline = time.monotonic() + 10
    while not again.ready:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert again.snapshot.version == pinned and again.status()["pinned_version"] == pinned


def ring_walks(n_sessions: int, start: int = 0, t0: float = T0) -> list[Event]:
    """Sessions of 8 steps around a ring of 100 items: each item leads to the next."""
    return [Event(f"r{s}", f"item{(s * 7 + i) % 100}", "view", t0 + s * 10 + i, f"r{s}")
            for s in range(start, start + n_sessions) for i in range(8)]


def _damaged(snap):
    """The same model with every row's neighbours replaced by unrelated items."""
    rng = np.random.default_rng(0)
    indices = rng.integers(0, snap.n_items, len(snap.indices)).astype(np.int32)
    return dataclasses.replace(snap, indices=indices)


def test_the_gate_rejects_a_damaged_model_and_passes_a_healthy_one(tmp_path, engines):
    engine = engines(tmp_path, gate_events=200)
    engine.load(ring_walks(200))
    serving = engine.snapshot.version
    candidate = engine.learner.propose(_damaged(engine.snapshot))
    assert engine.version(candidate).state == "CANDIDATE"
    engine.record_events(ring_walks(50, start=200, t0=T0 + 5000))  # held-out predictions
    assert engine.flush()
    info = engine.version(candidate)
    assert info.state == "REJECTED" and "HR@20" in info.reason and "worse" in info.reason
    assert engine.learner.checkpoints.get(candidate).state == "REJECTED"
    assert line_of_serving(engine) == serving  # the line that served before still serves

    healthy = engine.rebuild()
    assert healthy.state == "CANDIDATE"
    engine.record_events(ring_walks(50, start=250, t0=T0 + 9000))
    assert engine.flush()
    assert engine.version(healthy.version).state in ("SERVING", "AVAILABLE")
    assert line_of_serving(engine) == healthy.version


def line_of_serving(engine):
    return int(engine.snapshot.meta.get("line", engine.snapshot.version))


def _impressions(engine, n_requests, click_every, user="u"):
    for i in range(n_requests):
        rec = engine.recommend(user_id=f"{user}{i}", context_items=["a"], k=2)
        engine.record_impressions(rec.request_id, f"{user}{i}", [s.item_id for s in rec.items])
        if click_every and i % click_every == 0:
            engine.record_click(rec.request_id, f"{user}{i}", rec.items[0].item_id)


def test_a_ctr_collapse_rolls_back_to_the_previous_line(tmp_path, engines):
    engine = engines(tmp_path, gate_enabled=False, feedback_window=200, ctr_floor=0.0)
    engine.load(walks(20))
    first = line_of_serving(engine)
    _impressions(engine, 100, click_every=3)  # 200 impressions, CTR 34/200
    second = engine.rebuild().version  # no gate: serves at once, a new line
    assert line_of_serving(engine) == second
    _impressions(engine, 99, click_every=20)  # 198 impressions: the window is not full yet
    assert engine.status()["pinned_version"] is None
    _impressions(engine, 1, click_every=0)  # 200: CTR 5/200, far below 34/200
    status = engine.status()
    assert status["pinned_version"] == first and engine.snapshot.version == first
    assert status["alerts"][0][0] == "auto_rollback" and "lower" in status["alerts"][0][1]
    assert engine.counters["auto_rollbacks"] == 1
    feedback = {f["version"]: f for f in status["feedback"]}
    assert feedback[first]["window_clicks"] == 34 and feedback[second]["window_clicks"] == 5
    engine.resume_learning()  # the operator acts: the alert clears
    assert engine.status()["alerts"] == []


def test_ab_arm_serves_its_share_and_gets_its_clicks(tmp_path, engines):
    engine = engines(tmp_path, gate_enabled=False)
    engine.load(walks(20))
    arm = engine.snapshot.version
    engine.rebuild()
    with pytest.raises(InvalidArgument, match="fraction"):
        engine.start_experiment("ab", arm, 1.5)
    with pytest.raises(NotFound):
        engine.start_experiment("ab", 10**9, 0.5)
    engine.start_experiment("ab", arm, 0.5)
    assert engine.version(arm).state == "SHADOW"
    users = [f"user{i}" for i in range(200)]
    served = {u: engine.recommend(user_id=u, context_items=["a"]) for u in users}
    for u, rec in served.items():
        assert (rec.model_version == arm) == in_arm(u, 0.5)
        engine.record_impressions(rec.request_id, u, [rec.items[0].item_id])
        if rec.model_version == arm:
            engine.record_click(rec.request_id, u, rec.items[0].item_id)
    n_arm = sum(in_arm(u, 0.5) for u in users)
    assert 60 < n_arm < 140
    feedback = {f["version"]: f for f in engine.status()["feedback"]}
    assert feedback[arm]["impressions"] == feedback[arm]["clicks"] == n_arm
    assert feedback[line_of_serving(engine)]["clicks"] == 0
    engine.stop_experiment("ab")
    assert engine.status()["ab_test"] is None


def test_shadow_scores_off_the_response_path(tmp_path, engines):
    engine = engines(tmp_path, gate_enabled=False)
    engine.load(walks(20))
    old = engine.snapshot.version
    engine.rebuild()
    engine.start_experiment("shadow", old, 1.0)
    for i in range(50):
        engine.recommend(context_items=["a"], k=3)
    deadline = time.monotonic() + 5
    while (stats := engine.metrics()["shadow"])["requests"] + stats["dropped"] < 50:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert stats["version"] == old and stats["requests"] > 0
    assert stats["mean_overlap"] == pytest.approx(1.0)  # same counts, same answers
    engine.stop_experiment("shadow")
    assert engine.metrics()["shadow"] is None


def test_old_segments_go_once_kept_checkpoints_cover_them(tmp_path, engines):
    log = LocalEventLog(tmp_path / "events", segment_bytes=2000)
    engine = Engine(ModelConfig(), limits=LimitsConfig(), cache=CacheConfig(enabled=False),
                    history=HistoryConfig(), exploration=ExplorationConfig(rate=0.0),
                    learning=LearningConfig(gate_enabled=False, checkpoints_kept=2), log=log, data_dir=tmp_path)
    engine.load(walks(20))
    for round_ in range(3):
        engine.record_events(walks(20, start=20 * (round_ + 1)))
        assert engine.flush()
        engine.rebuild()
    kept = engine.learner.checkpoints.list()
    assert len(kept) == 3  # the newest 2, and the line before the serving one (auto-rollback's target)
    assert 0 < log.start_offset <= min(c.event_watermark for c in kept)
    engine.close()
    log.close()
    again = engines(tmp_path)  # starts from the newest checkpoint: the deleted events are not needed
    again.start()
    assert again.flush() and counts(again) == batch_counts(walks(80))


def test_a_ctr_below_the_floor_starts_a_full_rebuild(tmp_path, engines):
    engine = engines(tmp_path, feedback_window=100, ctr_floor=0.05, auto_rollback=False)
    engine.load(walks(20))
    before = len(engine.learner.checkpoints.list())
    _impressions(engine, 50, click_every=0)  # 100 impressions, no clicks
    deadline = time.monotonic() + 10
    while len(engine.learner.checkpoints.list()) == before:
        assert time.monotonic() < deadline, "no rebuild after the CTR fell below the floor"
        time.sleep(0.01)
    newest = engine.version(engine.learner.checkpoints.list()[0].version)
    assert newest.state == "CANDIDATE" and "below the floor" in newest.reason


def test_after_a_restart_publishes_build_on_the_checkpoint(tmp_path, engines):
    first = engines(tmp_path)
    first.load(walks(30))
    first.close()
    first.event_log.close()
    again = engines(tmp_path)
    again.start()
    assert again.flush()
    again.record_events(walks(2, "xy", start=30))
    assert again.flush()
    meta = again.snapshot.meta
    assert meta["kind"] == "incremental" and meta["rows_repruned"] == 2  # x and y only


def test_versions_continue_after_checkpoints_restored_without_the_state_file(tmp_path, engines):
    first = engines(tmp_path)
    first.load(walks(10))
    newest = first.learner.checkpoints.list()[0].version
    first.close()
    first.event_log.close()
    (tmp_path / "learner.json").unlink()  # e.g. only the checkpoints came back from a backup
    again = engines(tmp_path)
    again.start()
    again.record_events(walks(2, start=10))
    assert again.flush() and again.snapshot.version > newest
    assert again.rebuild().version > newest  # a full build saves a checkpoint under a new number


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling classes only")
def test_the_learner_thread_runs_at_idle_priority(engines):
    engine = engines()
    engine.load(walks(5))
    assert os.sched_getscheduler(engine.learner._thread.native_id) == os.SCHED_IDLE
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # only the learner: request threads keep theirs


def as_follower(engine, leader="r1"):
    """Make the engine's learner a fleet follower (core.fleet sets the same hooks)."""
    learner = engine.learner
    learner.leading, learner.leader_name, learner.serve_early = (lambda: False), (lambda: leader), False
    return learner


def test_a_follower_serves_only_once_caught_up_and_stays_on_the_fleets_line(tmp_path, engines):
    first = engines(tmp_path)
    first.load(walks(30))
    line = first.learner.checkpoints.list()[0].version
    first.record_events(walks(20, "abce", start=30))  # the tail after the checkpoint
    assert first.flush()
    first.close()
    first.event_log.close()

    again = engines(tmp_path)
    learner = as_follower(again)
    pending_when_serving = []
    again.start(on_serving=lambda: pending_when_serving.append(learner.pending()))
    assert again.flush()
    assert pending_when_serving == [0]  # not at the checkpoint, before the replay
    assert line_of_serving(again) == line and again.snapshot.meta["kind"] == "incremental"
    assert counts(again) == batch_counts(walks(30) + walks(20, "abce", start=30))


def test_a_follower_builds_only_the_leaders_lines_and_saves_no_checkpoints(tmp_path, engines):
    engine = engines(tmp_path)
    engine.load(walks(30))
    saved = len(engine.learner.checkpoints.list())
    learner = as_follower(engine, leader="r7")
    with pytest.raises(FailedPrecondition, match="r7"):
        engine.rebuild()
    built = learner.follow_line(12345)
    assert engine.snapshot.version == built and line_of_serving(engine) == 12345
    assert engine.snapshot.meta["kind"] == "full"
    engine.record_events(walks(5, "xy", start=30))
    assert engine.flush() and line_of_serving(engine) == 12345  # incremental publishes stay on it
    assert len(learner.checkpoints.list()) == saved

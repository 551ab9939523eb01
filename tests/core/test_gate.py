"""The quality gate: predictions from a stream, HR@k of two snapshots, and the decision."""

import dataclasses
import re

import numpy as np
import pytest

from covisit.core.events import Event
from covisit.core.gate import GateRun, Prediction, Predictions, decide
from covisit.core.model import CoVisitModel

N_ITEMS = 200


def walk_log(rng, n_sessions, t0=0.0, prefix="s"):
    """Sessions that walk a ring of items in steps of 1..3, or jump anywhere one time in four:
    learnable, yet hard to guess from popularity."""
    events = []
    for s in range(n_sessions):
        item = int(rng.integers(N_ITEMS))
        for i in range(6):
            events.append(Event(f"u{s}", f"i{item}", "view", t0 + 10 * s + i, f"{prefix}{s}"))
            jump = rng.random() < 0.25
            item = int(rng.integers(N_ITEMS)) if jump else (item + int(rng.integers(1, 4))) % N_ITEMS
    return sorted(events, key=lambda e: e.timestamp)


@pytest.fixture(scope="module")
def snap_and_heldout():
    rng = np.random.default_rng(3)
    model = CoVisitModel()
    model.update(walk_log(rng, 800))
    heldout = walk_log(rng, 250, t0=1e5, prefix="h")  # events the model has not learned
    return model.snapshot(), Predictions().feed(heldout)


def run(candidate, serving, predictions, events=1000):
    gate = GateRun(candidate, serving, events=events)
    gate.observe(predictions)
    return gate.decision(tolerance=0.1)


def test_a_candidate_equal_to_serving_passes(snap_and_heldout):
    snap, predictions = snap_and_heldout
    d = run(snap, snap, predictions)
    assert d.passed and d.n == 1000 and d.candidate_hr == d.serving_hr > 0.5
    assert d.reason.endswith("on 1000 held-out predictions: 0.0% better, tolerance 10%")


@pytest.mark.parametrize("damage", ["rows emptied", "neighbours shuffled between rows"])
def test_a_damaged_candidate_is_rejected_with_the_figures(snap_and_heldout, damage):
    snap, predictions = snap_and_heldout
    if damage == "rows emptied":  # popularity fill only
        bad = dataclasses.replace(snap, ends=snap.starts)
    else:
        bad = dataclasses.replace(snap, indices=np.random.default_rng(0).permutation(snap.indices))
    d = run(bad, snap, predictions)
    assert not d.passed and d.candidate_hr < 0.5 * d.serving_hr
    match = re.fullmatch(r"HR@20 (\d\.\d{3}) vs serving (\d\.\d{3}) on 1000 held-out predictions: "
                         r"(\d+\.\d)% worse, tolerance 10%", d.reason)
    assert match, d.reason
    assert float(match[1]) == pytest.approx(d.candidate_hr, abs=5e-4)
    assert float(match[3]) == pytest.approx(100 * (1 - d.candidate_hr / d.serving_hr), abs=0.05)
    assert run(snap, bad, predictions).passed  # the other way round it is better


def test_tolerance_boundary():
    assert decide(45, 50, 100, 20, tolerance=0.1).passed  # exactly 10% worse
    assert not decide(44, 50, 100, 20, tolerance=0.1).passed
    assert decide(40, 50, 1000, 20, tolerance=0.2).passed  # 0.04 vs 0.05 * 0.8, despite rounding
    assert not decide(39, 50, 1000, 20, tolerance=0.2).passed
    assert not decide(49, 50, 100, 20, tolerance=0.0).passed
    assert decide(51, 50, 100, 20, tolerance=0.0).reason.endswith("2.0% better, tolerance 0%")
    with pytest.raises(ValueError):
        decide(1, 1, 1, 20, tolerance=1.0)


def test_any_candidate_passes_when_serving_has_no_hits():
    d = decide(0, 0, 100, 20)
    assert d.passed and d.serving_hr == 0 and "serving has no hits" in d.reason
    assert decide(0, 0, 0, 20).passed  # nothing scored yet


def test_run_stops_at_its_event_count_and_skips_unknown_targets(snap_and_heldout):
    snap, predictions = snap_and_heldout
    gate = GateRun(snap, snap, events=50, k=20)
    assert gate.observe([Prediction(("i1",), "never-seen")]) == 0
    assert gate.observe(predictions[:30]) == 30 and not gate.done
    assert gate.observe(predictions[30:]) == 20 and gate.done
    assert gate.observe(predictions) == 0 and gate.n == 50


def test_predictions_skip_first_items_and_repeats():
    p = Predictions(max_context=3)
    events = [Event("u", item, "view", t, "s") for t, item in enumerate("aabcbdd")]
    events.insert(3, Event("v", "x", "view", 2.5, "other"))  # another sequence's first item
    assert p.feed(events) == [
        Prediction(("a",), "b"), Prediction(("a", "b"), "c"), Prediction(("a", "b", "c"), "b"),
        Prediction(("b", "c", "b"), "d"),
    ]


def test_predictions_persist_between_batches_and_split_user_sessions_at_the_gap():
    events = [Event("u", item, "view", t) for t, item in enumerate("abcd")]
    events.append(Event("u", "e", "view", 10_000))  # past the 30-minute gap: a new session
    events.append(Event("u", "f", "view", 10_001))
    whole = Predictions().feed(events)
    p = Predictions()
    assert p.feed(events[:2]) + p.feed(events[2:]) == whole
    assert whole[-1] == Prediction(("e",), "f") and len(whole) == 4


def test_predictions_forget_the_least_recently_active_sequence():
    p = Predictions(max_sequences=2)
    p.feed([Event("a", "1", "view", 0), Event("b", "1", "view", 1), Event("a", "2", "view", 2),
            Event("c", "1", "view", 3)])  # c pushes out b, the least recently active
    assert len(p) == 2
    assert p.feed([Event("b", "2", "view", 4)]) == []  # b starts afresh
    assert p.feed([Event("c", "3", "view", 5)]) == [Prediction(("1",), "3")]

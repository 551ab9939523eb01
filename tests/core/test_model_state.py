"""Saving and loading the model's exact state: a loaded model counts on as if it never stopped."""

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covisit.core.config import ModelConfig
from covisit.core.events import Event
from covisit.core.model import CoVisitModel
from covisit.core.model_state import ARRAYS, FORMAT, STATE_FILE, ConfigMismatch, load_model, save_model
from covisit.core.snapshot import SnapshotError

from . import reference as ref

CONFIGS = [
    ModelConfig(),
    ModelConfig(window=3, backward=1.0, distance="linear"),
    ModelConfig(window=4, backward=0.3, distance="none", half_life=50.0, session_gap=30.0),
    ModelConfig(window=2, half_life=1.0, session_gap=2.0),  # rebases within a short log
]
TYPES = ["view", "click", "add_to_cart", "purchase"]
EVENTS = [
    Event("u1", "a", "view", 100.0), Event("u1", "b", "view", 110.0),
    Event("u2", "b", "click", 100.0), Event("u2", "c", "purchase", 130.0),
    Event("u3", "é", "view", 200.0, session_id="s9"), Event("u3", "a", "view", 210.0, session_id="s9"),
]


def model_of(events, config=None):
    model = CoVisitModel(config)
    model.update(events)
    return model


def assert_same_state(got: CoVisitModel, want: CoVisitModel) -> None:
    for name, one, other in zip(("indptr", "indices", "data", "popularity"),
                                (*got.csr(), got.popularity), (*want.csr(), want.popularity)):
        np.testing.assert_array_equal(one, other, err_msg=name)
        assert one.dtype == other.dtype, name
    assert got.n_links == want.n_links
    k = want._n_sequences
    assert got._n_sequences == k
    for name in ("_hist_items", "_hist_w", "_hist_n", "_last_time", "_uses_gap"):
        np.testing.assert_array_equal(getattr(got, name)[:k], getattr(want, name)[:k], err_msg=name)
    assert got.items.names() == want.items.names()
    assert got.sequences.names() == want.sequences.names()
    assert (got.n_events, got.anchor, got.config) == (want.n_events, want.anchor, want.config)


@pytest.fixture
def saved(tmp_path) -> Path:
    return save_model(model_of(EVENTS), tmp_path / "model")


# --- round trips -------------------------------------------------------------------------------

def test_round_trip_restores_every_array(tmp_path):
    model = model_of(EVENTS, CONFIGS[2])
    loaded = load_model(save_model(model, tmp_path / "m"), CONFIGS[2], threads=2)
    assert_same_state(loaded, model)
    assert loaded.threads == 2
    assert len(loaded._hist_n) == model._n_sequences  # spare capacity is not saved


def test_files_written(saved):
    assert {p.name for p in saved.iterdir()} == {f"{n}.npy" for n in ARRAYS} | {STATE_FILE}  # no .tmp
    for name, (dtype, ndim) in ARRAYS.items():
        array = np.load(saved / f"{name}.npy", allow_pickle=False)
        assert (array.dtype, array.ndim) == (dtype, ndim), name
    state = json.loads((saved / STATE_FILE).read_text())
    assert state["format"] == FORMAT and state["n_events"] == len(EVENTS)


def test_empty_model_round_trips_and_then_learns(tmp_path):
    loaded = load_model(save_model(CoVisitModel(), tmp_path), ModelConfig())
    assert loaded.n_items == 0 and loaded._hist_items.shape == (0, ModelConfig().window)
    loaded.update(EVENTS)
    assert_same_state(loaded, model_of(EVENTS))


def test_save_over_an_older_save(tmp_path):
    save_model(model_of(EVENTS[:2]), tmp_path)
    model = model_of(EVENTS)
    assert_same_state(load_model(save_model(model, tmp_path), ModelConfig()), model)


def test_loaded_arrays_are_writable_not_mmapped(saved):
    loaded = load_model(saved, ModelConfig())
    for name in ("data", "popularity", "_hist_items", "_hist_n"):
        array = getattr(loaded, name)
        assert array.flags.writeable and not isinstance(array, np.memmap), name


def test_encoded_sequences_without_names_round_trip(tmp_path):
    # the bulk path counts sequence ids that were never interned as names
    model = CoVisitModel()
    for name in "abc":
        model.items.intern(name)
    model.update_encoded(np.array([0, 0, 5]), np.array([0, 1, 2]), np.ones(3), np.arange(3.0))
    loaded = load_model(save_model(model, tmp_path), ModelConfig())
    assert_same_state(loaded, model)
    assert len(loaded.sequences) == 0 and loaded._n_sequences == 6


event_logs = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 6), st.sampled_from(TYPES),
              st.sampled_from([0.0, 1.0, 3.0, 50.0]), st.booleans()),
    min_size=0, max_size=60)


def merging_in_place(model: CoVisitModel) -> CoVisitModel:
    model._goes_bulk = lambda n_events: False
    return model


@settings(max_examples=60, deadline=None)
@given(log=event_logs, cuts=st.lists(st.integers(0, 60), max_size=3), config=st.sampled_from(CONFIGS),
       in_place=st.booleans())
def test_save_load_update_equals_never_saved(log, cuts, config, in_place):
    events, t = [], 0.0
    for user, item, kind, dt, in_session in log:  # user sequences split at gaps, sessions don't
        t += dt
        events.append(Event(f"u{user}", f"i{item}", kind, t, f"s{user}" if in_session else None))
    kept, restarted = CoVisitModel(config), CoVisitModel(config)
    if in_place:  # kept merges into a store with gaps and room, restarted into a packed one
        kept, restarted = merging_in_place(kept), merging_in_place(restarted)
    bounds = sorted({0, len(events), *(c for c in cuts if c <= len(events))})
    with tempfile.TemporaryDirectory() as tmp:
        for lo, hi in zip(bounds, bounds[1:]):
            kept.update(events[lo:hi])
            restarted.update(events[lo:hi])
            restarted = load_model(save_model(restarted, tmp), config)
            if in_place:
                restarted = merging_in_place(restarted)
            assert_same_state(restarted, kept)
    more = [Event("u0", "i1", "view", t + 1.0), Event("u9", "new", "click", t + 2.0),
            Event("u0", "new", "view", t + 2.5, "s0")]
    kept.update(more)
    restarted.update(more)
    assert_same_state(restarted, kept)
    for name in ("indptr", "indices", "scores", "fill_order"):
        np.testing.assert_array_equal(ref.serving_arrays(restarted.snapshot())[name],
                                      ref.serving_arrays(kept.snapshot())[name], err_msg=name)


# --- refusals ----------------------------------------------------------------------------------

def test_config_mismatch_names_the_setting(saved):
    with pytest.raises(ConfigMismatch, match=r"different config \(window: saved 2, wanted 3\)"):
        load_model(saved, ModelConfig(window=3))
    with pytest.raises(SnapshotError, match="half_life"):  # a SnapshotError too
        load_model(saved, dataclasses.replace(ModelConfig(), half_life=10.0))


def test_missing_state_file(saved):
    (saved / STATE_FILE).unlink()
    with pytest.raises(SnapshotError, match="no state.json; not a saved covisit model"):
        load_model(saved, ModelConfig())


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.update(format="other"), "not a saved covisit model"),
    (lambda s: s.update(format_version=99), "format_version 99 is not supported"),
    (lambda s: s.update(n_events=-1), "invalid n_events"),
    (lambda s: s["counts"].update(items=99), "counts .* do not match"),
    (lambda s: s.update(n_sequences=1), "hist_items.npy has shape"),
    (lambda s: s["config"].update(window="x"), "bad config"),
])
def test_bad_state_file(saved, edit, match):
    state = json.loads((saved / STATE_FILE).read_text())
    edit(state)
    (saved / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(SnapshotError, match=match):
        load_model(saved, ModelConfig())


def test_truncated_array_names_the_file(saved):
    file = saved / "data.npy"
    file.write_bytes(file.read_bytes()[:-8])
    with pytest.raises(SnapshotError, match=r"data\.npy: unreadable"):
        load_model(saved, ModelConfig())


def test_missing_array_names_the_file(saved):
    (saved / "hist_w.npy").unlink()
    with pytest.raises(SnapshotError, match=r"hist_w\.npy: missing"):
        load_model(saved, ModelConfig())


@pytest.mark.parametrize("name, array, match", [
    ("indices", np.zeros(3, dtype=np.int64), r"indices\.npy: expected int32"),
    ("hist_items", np.zeros(4, dtype=np.int32), r"hist_items\.npy: expected int32 with 2 dims"),
    ("indices", lambda a: a + 100, r"indices\.npy out of range"),
    ("indptr", lambda a: a[::-1].copy(), r"indptr\.npy does not match"),
    ("data", lambda a: a[:-1].copy(), r"data\.npy and indices\.npy differ"),
    ("hist_items", lambda a: a - 5, r"hist_items\.npy out of range"),
    ("hist_n", lambda a: a[:-1].copy(), r"hist_n\.npy has"),
    ("popularity", lambda a: np.concatenate([a, a]), r"popularity\.npy has"),
    ("item_offsets", lambda a: a[:-1].copy(), r"item_offsets\.npy: bad id table"),
])
def test_inconsistent_arrays(saved, name, array, match):
    file = saved / f"{name}.npy"
    if callable(array):
        array = array(np.load(file))
    np.save(file, array, allow_pickle=False)
    with pytest.raises(SnapshotError, match=match):
        load_model(saved, ModelConfig())

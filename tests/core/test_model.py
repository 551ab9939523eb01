"""The model's exact counts, its snapshots, and the invariant incremental == batch."""

import dataclasses
from itertools import repeat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covisit.core.config import ModelConfig
from covisit.core.events import Event, InvalidEvent
from covisit.core.model import CoVisitModel

from . import reference as ref

CONFIGS = [
    ModelConfig(),
    ModelConfig(window=1, distance="none"),
    ModelConfig(window=3, backward=1.0, distance="linear"),
    ModelConfig(window=4, backward=0.3, distance="none", half_life=50.0, session_gap=30.0),
]
TYPES = ["view", "click", "add_to_cart", "purchase"]
# directed raw counts, so hand-computed figures stay readable
RAW = ModelConfig(window=2, backward=0.0, distance="inverse", similarity="raw")


def random_log(rng, n, n_users=4, n_items=9):
    events, t = [], 1000.0
    for _ in range(n):
        t += float(rng.choice([0.0, 1.0, 5.0, 40.0]))
        user = f"u{rng.integers(n_users)}"
        session = f"s{rng.integers(3)}" if rng.random() < 0.3 else None
        events.append(Event(user, f"i{rng.integers(n_items)}", TYPES[rng.integers(4)], t, session))
    return events


def assert_same_counts(got: CoVisitModel, want: CoVisitModel) -> None:
    for name, one, other in zip(("indptr", "indices", "data"), got.csr(), want.csr()):
        np.testing.assert_array_equal(one, other, err_msg=name)
        assert one.dtype == other.dtype, name
    np.testing.assert_array_equal(got.popularity, want.popularity, err_msg="popularity")
    assert got.n_links == want.n_links


def reference_counts(model, events):
    cfg = model.config
    encoded = [(ev.sequence_key(), model.items.get(ev.item_id), cfg.event_weights[ev.event_type],
                ev.timestamp, not ev.session_id) for ev in events]
    return ref.count_pairs(encoded, cfg.window, cfg.backward, cfg.distance, cfg.session_gap,
                           cfg.half_life, model.anchor or 0.0)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"w{c.window}-b{c.backward}-{c.distance}-h{c.half_life}")
def test_counts_match_the_reference_twin(config):
    rng = np.random.default_rng(7)
    events = random_log(rng, 300)
    model = CoVisitModel(config)
    model.update(events)
    counts, pop = reference_counts(model, events)
    indptr, indices, data = ref.to_csr(counts, model.n_items)
    got_indptr, got_indices, got_data = model.csr()
    np.testing.assert_array_equal(got_indptr, indptr)
    got_indices, got_data = ref.sort_rows(got_indptr, got_indices, got_data)
    np.testing.assert_array_equal(got_indices, indices)
    np.testing.assert_array_equal(got_data, data)
    np.testing.assert_array_equal(model.popularity, [pop[i] for i in range(model.n_items)])


def test_counts_by_hand():
    # u1: a b c(purchase) ; u2: a c. Window 5, 1/d: a->b 1, b->c 4, a->c 4/2 + 1.
    model = CoVisitModel(dataclasses.replace(RAW, window=5))
    model.update([Event("u1", "a", "view", 1), Event("u1", "b", "view", 2),
                  Event("u1", "c", "purchase", 3), Event("u2", "a", "view", 1), Event("u2", "c", "view", 2)])
    a, b, c = (model.items.get(x) for x in "abc")
    indptr, indices, data = model.csr()
    dense = np.zeros((3, 3))
    for r in range(3):
        for q in range(indptr[r], indptr[r + 1]):
            dense[r, indices[q]] = data[q]
    expected = np.zeros((3, 3))
    expected[a, b], expected[b, c], expected[a, c] = 1.0, 4.0, 3.0
    np.testing.assert_array_equal(dense, expected)
    np.testing.assert_array_equal(model.popularity[[a, b, c]], [2.0, 1.0, 5.0])


def test_user_sequences_split_at_the_session_gap_but_sessions_do_not():
    model = CoVisitModel(dataclasses.replace(RAW, session_gap=10.0))
    model.update([Event("u", "a", "view", 0), Event("u", "b", "view", 100),  # gap: no link
                  Event("v", "a", "view", 0, "s"), Event("v", "b", "view", 100, "s")])  # session: link
    a, b = model.items.get("a"), model.items.get("b")
    indptr, indices, data = model.csr()
    assert model.n_links == 1 and indices[indptr[a]] == b
    assert data[0] == 1.0


def test_consecutive_repeat_is_one_visit():
    model = CoVisitModel(dataclasses.replace(RAW, distance="none"))
    model.update([Event("u", "a", "view", 0), Event("u", "a", "purchase", 1), Event("u", "b", "view", 2)])
    assert model.n_links == 1  # a -> b once, no a -> a
    # backward weight uses the repeated visit's larger weight
    model = CoVisitModel(dataclasses.replace(RAW, distance="none", backward=1.0))
    model.update([Event("u", "a", "view", 0), Event("u", "a", "purchase", 1), Event("u", "b", "view", 2)])
    b = model.items.get("b")
    indptr, _, data = model.csr()
    assert data[indptr[b]] == 4.0


def test_bad_event_changes_nothing():
    model = CoVisitModel()
    model.update([Event("u", "a", "view", 0), Event("u", "b", "view", 1)])
    before = [a.copy() for a in model.csr()]
    n_items, n_events = len(model.items), model.n_events
    with pytest.raises(InvalidEvent, match=r"events\[1\]\.event_type"):
        model.update([Event("u", "c", "view", 2), Event("u", "d", "like", 3)])
    assert len(model.items) == n_items and model.n_events == n_events
    for got, want in zip(model.csr(), before):
        np.testing.assert_array_equal(got, want)


def event_tuples(n_items):
    return st.tuples(st.integers(0, 3), st.integers(0, n_items - 1), st.sampled_from(TYPES),
                     st.sampled_from([0.0, 1.0, 3.0, 50.0]), st.booleans())


event_logs = st.lists(event_tuples(7), min_size=0, max_size=60)


def events_of(log):
    events, t = [], 0.0
    for user, item, kind, dt, in_session in log:
        t += dt
        events.append(Event(f"u{user}", f"i{item}", kind, t, f"s{user}" if in_session else None))
    return events


def batches_of(events, cuts):
    bounds = sorted({0, len(events), *(c for c in cuts if c <= len(events))})
    return [events[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


@settings(max_examples=60, deadline=None)
@given(log=event_logs, cuts=st.lists(st.integers(0, 60), max_size=4),
       config=st.sampled_from(CONFIGS))
def test_incremental_update_equals_one_batch_build(log, cuts, config):
    events = events_of(log)
    batch = CoVisitModel(config)
    if events:
        batch.update(events)
    incremental = CoVisitModel(config)
    for part in batches_of(events, cuts):
        incremental.update(part)
    assert_same_counts(incremental, batch)
    assert incremental.items.names() == batch.items.names()
    one, other = batch.snapshot(), incremental.snapshot()
    for name in ("indptr", "indices", "scores", "fill_order"):
        np.testing.assert_array_equal(ref.serving_arrays(one)[name], ref.serving_arrays(other)[name],
                                      err_msg=name)


def on_path(config, ways, spare=CoVisitModel.SPARE, hash_min=CoVisitModel.HASH_MIN):
    """A model that counts each batch the batch way if the next of `ways` is true, else merging
    in place."""
    model = CoVisitModel(config)
    chosen = iter(ways)
    model._goes_bulk = lambda n_events: next(chosen)
    model.SPARE, model.HASH_MIN = spare, hash_min
    return model


@settings(max_examples=80, deadline=None)
@given(log=event_logs, cuts=st.lists(st.integers(0, 60), max_size=6), config=st.sampled_from(CONFIGS),
       spare=st.sampled_from([0.0, 0.25, 4.0]), ways=st.lists(st.booleans(), min_size=7, max_size=7),
       hash_min=st.sampled_from([1, 3, CoVisitModel.HASH_MIN]))
def test_merging_in_place_counts_as_the_batch_way(log, cuts, config, spare, ways, hash_min):
    # spare 0: a batch that moves a row compacts the store; 4: rows move to the tail many times
    # before it fills. `mixed` takes either way, so the batch way also starts from a gappy store.
    # A small hash_min merges most rows by their hash tables, which grow, move with their rows,
    # and are rebuilt by a batch the batch way.
    bulk, in_place = on_path(config, repeat(True)), on_path(config, repeat(False), spare, hash_min)
    mixed = on_path(config, ways, spare, hash_min)
    for part in batches_of(events_of(log), cuts):
        for model in (bulk, in_place, mixed):
            model.update(part)
        assert_same_counts(in_place, bulk)
        assert_same_counts(mixed, bulk)
    assert in_place.digest() == mixed.digest() == bulk.digest()


def test_rows_grow_in_place_move_to_the_tail_and_a_full_store_compacts():
    config = dataclasses.replace(RAW, window=1, distance="none")  # a session [r, c]: r -> c
    model, batch = on_path(config, repeat(False), spare=10.0), on_path(config, repeat(True))
    sessions = iter(range(100))

    def add(row, cols):
        """Count row -> c for each c; returns whether the row moved and the store compacted."""
        events = []
        for c in cols:
            s = f"s{next(sessions)}"
            events += [Event("u", row, "view", 0.0, s), Event("u", c, "view", 1.0, s)]
        r, pool = model.items.get(row), model.indices
        start = model.starts[r] if r >= 0 else None
        model.update(events)
        batch.update(events)
        assert_same_counts(model, batch)
        return model.starts[model.items.get(row)] != start, model.indices is not pool

    assert add("a", "b")[1]  # into an empty store: compacts to make room
    assert add("a", "c") == (False, False)  # fits the room it got
    assert add("a", "d")[1]  # outgrows it, and the tail is empty
    assert add("b", "x") == (True, False)  # an empty row moves to the tail
    assert add("b", "y") == (False, False)
    assert add("b", "z") == (True, False)  # outgrows its room: moves, leaving a gap
    assert not np.shares_memory(model.csr()[1], model.indices)  # so csr() packs a copy
    model.SPARE = 0.0
    assert add("a", [f"n{k}" for k in range(30)])[1]
    assert np.shares_memory(batch.csr()[1], batch.indices)  # packed: views


def assert_tables_right(model: CoVisitModel) -> set[int]:
    """Each hash table maps every cell of its row, and nothing else, to its offset, at a load of
    half at most, and a lookup by the plain-Python twin finds each cell and misses a column the
    row lacks. Returns the rows with a table."""
    hashed = set(np.flatnonzero(model._table_bits[:model.n_items]).tolist())
    for r in hashed:
        lo, hi, bits = model.starts[r], model.ends[r], int(model._table_bits[r])
        slots = model._slots[model._table_at[r]:][:2 ** bits]
        assert hi - lo >= model.HASH_MIN and 2 * (hi - lo) <= len(slots), r
        assert sorted(slots[slots >= 0]) == list(range(hi - lo)), r
        row = model.indices[lo:hi]
        assert [ref.table_find(slots, bits, row, c) for c in row] == list(range(hi - lo)), r
        assert ref.table_find(slots, bits, row, model.n_items) is None, r  # an id no row holds
    return hashed


@settings(max_examples=30, deadline=None)
@given(log=st.lists(event_tuples(16), min_size=40, max_size=150),
       cuts=st.lists(st.integers(0, 150), min_size=5, max_size=30), config=st.sampled_from(CONFIGS),
       spare=st.sampled_from([0.0, 0.25, 4.0]), hash_min=st.sampled_from([1, 2, 5]),
       bulk_at=st.integers(1, 10))
def test_merging_by_hash_tables_counts_as_the_batch_way(log, cuts, config, spare, hash_min, bulk_at):
    # Many batches, so that most rows get a table, which grows, moves and compacts with its
    # row; `mixed` counts one batch the batch way, which makes new tables.
    bulk = on_path(config, repeat(True))
    in_place = on_path(config, repeat(False), spare, hash_min)
    mixed = on_path(config, (k == bulk_at for k in range(len(cuts) + 1)), spare, hash_min)
    for part in batches_of(events_of(log), cuts):
        for model in (bulk, in_place, mixed):
            model.update(part)
        assert_same_counts(in_place, bulk)
        assert_same_counts(mixed, bulk)
        assert_tables_right(in_place)
        assert_tables_right(mixed)
    assert in_place.digest() == mixed.digest() == bulk.digest()


def test_hash_tables_stay_right_as_rows_move_compact_and_grow():
    config = dataclasses.replace(RAW, window=1, distance="none")  # a session [r, c]: r -> c
    model, batch = on_path(config, repeat(False), spare=0.3, hash_min=4), on_path(config, repeat(True))
    model._goes_bulk = lambda n_events: step == 20  # one batch the batch way
    rng, t = np.random.default_rng(5), 0.0
    seen = {"move": 0, "compaction": 0, "growth": 0}
    for step in range(40):
        events = []
        for _ in range(12):  # rows r0..r3, the first ones busiest; columns new and old
            row, col, t = min(rng.geometric(0.5), 4) - 1, rng.integers(0, 3 * step + 10), t + 1.0
            events += [Event("u", f"r{row}", "view", t, f"s{t}"), Event("u", f"c{col}", "view", t, f"s{t}")]
        before = {r: (model.starts[r], model._table_bits[r]) for r in assert_tables_right(model)}
        pool = model.indices
        model.update(events)
        batch.update(events)
        assert_same_counts(model, batch)
        hashed = assert_tables_right(model)
        lengths = model.ends[:model.n_items] - model.starts[:model.n_items]
        if step == 20:  # a new store: a table for each long row, and no other
            assert hashed == set(np.flatnonzero(lengths >= model.HASH_MIN).tolist())
            continue
        kept = set(before) & hashed
        if model.indices is not pool:
            seen["compaction"] += bool(kept)
        else:  # a row that moves to the tail
            seen["move"] += sum(model.starts[r] != before[r][0] for r in kept)
        seen["growth"] += sum(model._table_bits[r] > before[r][1] for r in kept)
    assert min(seen.values()) > 0, seen


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"w{c.window}-b{c.backward}-{c.distance}-h{c.half_life}")
def test_thread_count_does_not_change_the_counts(config):
    # a build cuts the events and the rows into one chunk per thread; no trace of that may show
    events = random_log(np.random.default_rng(3), 400)
    models = []
    for threads in (1, 2, 3):
        model = CoVisitModel(config, threads=threads)
        model.update(events[:150])
        model.update(events[150:])
        models.append(model)
    for other in models[1:]:
        assert_same_counts(other, models[0])
        for name in ("indptr", "indices", "scores"):  # the prune runs rows on those threads too
            np.testing.assert_array_equal(ref.serving_arrays(other.snapshot())[name],
                                          ref.serving_arrays(models[0].snapshot())[name], err_msg=name)


@pytest.mark.parametrize("method", ["raw", "cosine", "jaccard", "lift", "llr", "conditional"])
@pytest.mark.parametrize("top_n", [1, 3, 200])
def test_snapshot_prunes_and_scores_like_the_reference(method, top_n):
    rng = np.random.default_rng(11)
    events = random_log(rng, 400, n_items=12)
    model = CoVisitModel(dataclasses.replace(ModelConfig(window=3, backward=0.5), similarity=method, top_n=top_n))
    model.update(events)
    snap = model.snapshot()
    counts, _ = reference_counts(model, events)
    expected = ref.prune(counts, method, top_n, snap.rank)
    for row in range(snap.n_items):
        got = [(int(i), s) for i, s in zip(*snap.row(row))]
        want = expected.get(row, [])
        assert [i for i, _ in got] == [i for i, _ in want], f"row {row}"
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-6, atol=1e-5)


def test_snapshot_popularity_order_and_metadata():
    model = CoVisitModel()
    model.update([Event("u", "a", "view", 0), Event("u", "b", "purchase", 1), Event("v", "b", "view", 2),
                  Event("v", "c", "click", 3)])
    snap = model.snapshot(version=4, parent=3)
    assert [snap.items.name(i) for i in snap.fill_order] == ["b", "c", "a"]
    assert snap.rank[snap.fill_order[0]] == 0
    assert (snap.version, snap.parent, snap.watermark) == (4, 3, 4)


def test_time_decay_rebases_instead_of_overflowing():
    # 10,000 half-lives: without moving the anchor, 2**10000 would overflow to inf
    model = CoVisitModel(dataclasses.replace(RAW, half_life=1.0))
    model.update([Event("u", "a", "view", 0.0), Event("u", "b", "view", 1.0)])
    model.update([Event("v", "a", "view", 10_000.0), Event("v", "b", "view", 10_001.0)])
    assert model.anchor >= 10_000.0 - 65
    indptr, _, data = model.csr()
    assert np.all(np.isfinite(data)) and np.all(np.isfinite(model.popularity))
    snap = model.snapshot()
    assert np.all(np.isfinite(snap.scores)) and np.all(np.isfinite(snap.popularity))
    # the old link decayed to nothing beside the new one: a -> b is the new pair's weight
    a = model.items.get("a")
    new_weight = 2.0 ** ((10_001.0 - model.anchor) / 1.0)
    assert data[indptr[a]] == pytest.approx(new_weight, rel=1e-12)

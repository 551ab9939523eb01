"""Incremental snapshots: re-prune the touched rows, copy the rest from the last snapshot."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covisit.core import kernels_build as kb
from covisit.core.config import SIMILARITIES, ModelConfig
from covisit.core.events import Event
from covisit.core import model as model_module
from covisit.core.model import CoVisitModel
from covisit.core.snapshot import Snapshot

from . import reference as ref

TYPES = ["view", "click", "add_to_cart", "purchase"]
# small top_n, so pruning (and its tie-break) decides what a row keeps
CONFIGS = [
    ModelConfig(top_n=2),
    ModelConfig(window=3, backward=1.0, distance="none", similarity="raw", top_n=3),
    ModelConfig(window=2, backward=0.5, half_life=40.0, session_gap=30.0, top_n=2),
    ModelConfig(window=2, backward=0.3, similarity="cosine", top_n=2),
]

batches = st.lists(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9), st.sampled_from(TYPES),
                       st.sampled_from([0.0, 1.0, 3.0, 50.0]), st.booleans()),
             min_size=0, max_size=25),
    min_size=1, max_size=5)


def to_events(batch, t0):
    events, t = [], t0
    for user, item, kind, dt, in_session in batch:
        t += dt
        events.append(Event(f"u{user}", f"i{item}", kind, t, f"s{user}" if in_session else None))
    return events, t


def count_row(model: CoVisitModel, r: int) -> np.ndarray:
    indptr, _, data = model.csr()
    return data[indptr[r]: indptr[r + 1]]


def assert_rows_equal(one, other, message):
    np.testing.assert_array_equal(one[0], other[0], err_msg=message)
    np.testing.assert_array_equal(one[1], other[1], err_msg=message)


@settings(max_examples=60, deadline=None)
@given(log=batches, config=st.sampled_from(CONFIGS))
def test_touched_rows_equal_a_full_prune_and_the_others_stay(log, config):
    incremental, full = CoVisitModel(config), CoVisitModel(config)
    previous, t = None, 0.0
    for version, batch in enumerate(log, start=1):
        events, t = to_events(batch, t)
        n_before, anchor_before = incremental.n_items, incremental.anchor
        counts_before = [count_row(incremental, r).copy() for r in range(n_before)]
        if events:
            incremental.update(events)
            full.update(events)
        snap = incremental.snapshot(version, incremental=True)
        expected = full.snapshot(version)

        # counts changed, or an event (popularity), or new since the last snapshot
        with_events = {incremental.items.get(ev.item_id) for ev in events}
        touched = {r for r in range(incremental.n_items)
                   if r >= n_before or r in with_events
                   or not np.array_equal(count_row(incremental, r), counts_before[r])}
        # a full prune the first time, and after a decay rebase (which moves the anchor)
        pruned_all = snap.meta["kind"] == "full"
        if previous is None:
            assert pruned_all
        elif pruned_all:
            assert incremental.anchor != anchor_before
        assert snap.meta["rows_repruned"] == (incremental.n_items if pruned_all else len(touched))
        assert snap.n_items == expected.n_items == incremental.n_items
        for name in ("popularity", "fill_order", "rank"):
            np.testing.assert_array_equal(ref.serving_arrays(snap)[name], ref.serving_arrays(expected)[name], err_msg=name)
        for r in range(snap.n_items):
            if pruned_all or r in touched:
                assert_rows_equal(snap.row(r), expected.row(r), f"touched row {r}")
            else:
                assert_rows_equal(snap.row(r), previous.row(r), f"untouched row {r}")
        snap.check()
        previous = snap


@pytest.mark.parametrize("similarity", ["raw", "conditional"])
def test_without_ties_row_only_similarities_match_a_full_snapshot_exactly(similarity):
    # Every row's counts differ (one column, or a -> b_j seen 2**j times), so no tie-break by
    # popularity can differ: copied rows equal their full prune too.
    config = ModelConfig(window=1, backward=0.0, distance="none", similarity=similarity, top_n=2)
    incremental, full = CoVisitModel(config), CoVisitModel(config)
    for step in range(5):
        t = 10.0 * step
        events = [Event(f"x{step}", f"x{step}", "view", t), Event(f"x{step}", f"y{step}", "click", t + 1)]
        for k in range(2 ** step):
            events += [Event(f"a{step}.{k}", "a", "view", t), Event(f"a{step}.{k}", f"b{step}", "view", t + 1)]
        incremental.update(events)
        full.update(events)
        snap, expected = incremental.snapshot(incremental=True), full.snapshot()
        assert snap.meta["kind"] == ("full" if step == 0 else "incremental")
        for name in ("indptr", "indices", "scores", "fill_order", "rank"):
            np.testing.assert_array_equal(ref.serving_arrays(snap)[name], ref.serving_arrays(expected)[name], err_msg=name)


def test_published_snapshots_never_change_while_later_ones_share_their_pool(monkeypatch):
    monkeypatch.setattr(model_module, "HEADROOM", 0.0)
    monkeypatch.setattr(model_module, "MIN_HEADROOM", 30)  # room for a few appends, then a new pool
    rng = np.random.default_rng(7)
    model = CoVisitModel(ModelConfig(window=2, backward=0.5, top_n=3))
    kept, shared, new_pools = [], 0, 0
    for version in range(1, 40):
        users, items = rng.integers(0, 6, size=3), rng.integers(0, 15, size=3)
        model.update([Event(f"u{u}", f"i{i}", "view", float(10 * version + k))
                      for k, (u, i) in enumerate(zip(users, items))])
        snap = model.snapshot(version, incremental=True)
        if kept:
            shared += snap.indices is kept[-1][0].indices
            new_pools += snap.indices is not kept[-1][0].indices
        kept.append((snap, {k: v.copy() for k, v in ref.serving_arrays(snap).items()}))
    assert shared and new_pools > 1  # both ways of publishing ran
    for snap, arrays in kept:
        snap.check()
        for name, array in ref.serving_arrays(snap).items():
            np.testing.assert_array_equal(array, arrays[name], err_msg=f"v{snap.version} {name}")


def test_meta_and_the_touched_record_resets():
    model = CoVisitModel(ModelConfig(top_n=3))
    first = model.snapshot(incremental=True)  # nothing to start from: a full one
    assert first.meta["kind"] == "full" and first.meta["rows_repruned"] == 0 and first.n_items == 0
    model.update([Event("u", "a", "view", 1.0), Event("u", "b", "view", 2.0)])
    grown = model.snapshot(2, 1, incremental=True)
    assert (grown.meta["kind"], grown.meta["rows_repruned"], grown.n_items) == ("incremental", 2, 2)
    assert grown.meta["build_seconds"] >= 0.0
    again = model.snapshot(3, 2, incremental=True)  # nothing changed since
    assert again.meta["rows_repruned"] == 0
    for name in ("indptr", "indices", "scores", "fill_order", "rank", "popularity"):
        np.testing.assert_array_equal(ref.serving_arrays(again)[name], ref.serving_arrays(grown)[name], err_msg=name)
    model.update([Event("v", "c", "view", 3.0)])
    full = model.snapshot(4, 3)
    assert (full.meta["kind"], full.meta["rows_repruned"]) == ("full", 3)
    assert model.snapshot(5, 4, incremental=True).meta["rows_repruned"] == 0  # a full one resets too


def test_new_items_grow_the_snapshot():
    model = CoVisitModel(ModelConfig(top_n=5))
    model.update([Event("u", "a", "view", 1.0), Event("u", "b", "view", 2.0)])
    before = model.snapshot()
    model.items.intern("x")  # interned but never counted: an empty row
    model.update([Event("v", "c", "purchase", 3.0), Event("v", "a", "view", 4.0)])
    snap = model.snapshot(incremental=True)
    assert snap.n_items == 4 and snap.meta["rows_repruned"] == 3  # a (touched), x and c (new)
    a, b, x, c = (model.items.get(i) for i in "abxc")
    assert_rows_equal(snap.row(b), before.row(b), "b")
    assert snap.row(x)[0].size == 0
    assert [model.items.name(i) for i in snap.row(c)[0]] == ["a"]
    assert [model.items.name(i) for i in snap.fill_order] == ["c", "a", "b", "x"]
    snap.check()


def test_a_decay_rebase_makes_the_next_snapshot_full():
    model = CoVisitModel(ModelConfig(half_life=1.0))
    model.update([Event("u", "a", "view", 0.0), Event("u", "b", "view", 1.0)])
    model.snapshot()
    model.update([Event("u", "c", "view", 1000.0)])  # far past the anchor: every weight rescales
    assert model.snapshot(incremental=True).meta["kind"] == "full"


def test_snapshot_items_stay_fixed_while_the_model_grows(tmp_path):
    model = CoVisitModel()
    model.update([Event("u", "a", "view", 1.0), Event("u", "b", "view", 2.0)])
    snap = model.snapshot()
    model.update([Event("u", "c", "view", 3.0)])
    assert len(snap.items) == 2 and "c" not in snap.items and snap.items.get("c") == -1
    loaded = Snapshot.load(snap.save(tmp_path / "snap"))
    assert loaded.items.names() == ["a", "b"]


# --- the kernels beside their twins ----------------------------------------------------------

def reference_fill_order(popularity):
    order = np.argsort(-popularity, kind="stable").astype(np.int32)
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return order, rank


@settings(max_examples=100, deadline=None)
@given(before=st.lists(st.integers(0, 4), max_size=30), data=st.data())
def test_merge_fill_order_equals_a_full_argsort(before, data):
    old = np.array(before, dtype=np.float64)
    n_new = data.draw(st.integers(0, 5), label="new items")
    moved = np.array(data.draw(st.lists(st.booleans(), min_size=len(old) + n_new,
                                        max_size=len(old) + n_new), label="moved"), dtype=np.bool_)
    popularity = np.concatenate([old, np.zeros(n_new)])
    bumps = data.draw(st.lists(st.integers(0, 3), min_size=len(popularity), max_size=len(popularity)))
    moved[len(old):] = True
    popularity[moved] += np.array(bumps, dtype=np.float64)[moved]  # ties are likely
    changed = np.flatnonzero(moved)
    changed = changed[np.argsort(-popularity[changed], kind="stable")]
    fill_order = np.empty(len(popularity), dtype=np.int32)
    rank = np.empty(len(popularity), dtype=np.int32)
    kb.merge_fill_order(reference_fill_order(old)[0], moved, changed, popularity, fill_order, rank)
    expected = reference_fill_order(popularity)
    np.testing.assert_array_equal(fill_order, expected[0])
    np.testing.assert_array_equal(rank, expected[1])


def random_csr(rng, n_rows, n_cols, max_len):
    lengths = rng.integers(0, max_len + 1, size=n_rows)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = rng.integers(0, n_cols, size=indptr[-1]).astype(np.int32)
    return indptr, indices, rng.random(indptr[-1]).astype(np.float32)


def spliced_rows(seed):
    """Old rows scattered in a pool with gaps (as starts/ends), the rows to replace (some old
    ones and every new one), their new CSR, and the rows the result must have."""
    rng = np.random.default_rng(seed)
    n_old, n = 12, 12 + seed
    indptr, indices, scores = random_csr(rng, n_old, n, 4)
    gaps = np.cumsum(rng.integers(0, 3, size=n_old))  # each row moved up by the gaps before it
    starts, ends = indptr[:-1] + gaps, indptr[1:] + gaps
    pool = (np.full(indptr[-1] + gaps[-1] + 5, -7, np.int32), np.full(indptr[-1] + gaps[-1] + 5, -7.0, np.float32))
    for r in range(n_old):
        pool[0][starts[r]:ends[r]] = indices[indptr[r]:indptr[r + 1]]
        pool[1][starts[r]:ends[r]] = scores[indptr[r]:indptr[r + 1]]
    rows = np.union1d(rng.choice(n_old, size=rng.integers(0, n_old + 1), replace=False),
                      np.arange(n_old, n)).astype(np.int64)
    new = random_csr(rng, len(rows), n, 4)
    expected = []
    for r in range(n):
        k = np.searchsorted(rows, r)
        csr, i = (new, k) if k < len(rows) and rows[k] == r else ((indptr, indices, scores), r)
        expected.append((csr[1][csr[0][i]: csr[0][i + 1]], csr[2][csr[0][i]: csr[0][i + 1]]))
    return (starts, ends, *pool), rows, new, expected


@pytest.mark.parametrize("seed", range(5))
def test_splice_rows_packs_the_old_rows_with_the_new_ones(seed):
    old, rows, new, expected = spliced_rows(seed)
    n, n_links = len(expected), sum(len(e[0]) for e in expected)
    out = (np.empty(n + 1, np.int64), np.empty(n_links + 3, np.int32), np.empty(n_links + 3, np.float32))
    kb.splice_rows(*old, rows, *new, *out)
    np.testing.assert_array_equal(out[0], np.cumsum([0] + [len(e[0]) for e in expected]))
    np.testing.assert_array_equal(out[1][:n_links], np.concatenate([e[0] for e in expected]))
    np.testing.assert_array_equal(out[2][:n_links], np.concatenate([e[1] for e in expected]))


@pytest.mark.parametrize("seed", range(5))
def test_append_rows_writes_only_past_fill_and_moves_only_the_new_rows(seed):
    (starts, ends, pool_i, pool_s), rows, new, expected = spliced_rows(seed)
    fill = int(ends.max())
    pool_i = np.concatenate([pool_i, np.full(len(new[1]), -7, np.int32)])
    pool_s = np.concatenate([pool_s, np.full(len(new[1]), -7.0, np.float32)])
    before = pool_i[:fill].copy(), pool_s[:fill].copy()
    out = np.empty(len(expected), np.int64), np.empty(len(expected), np.int64)
    kb.append_rows(starts, ends, rows, *new, pool_i, pool_s, fill, *out)
    np.testing.assert_array_equal(pool_i[:fill], before[0])  # what older snapshots read stays
    np.testing.assert_array_equal(pool_s[:fill], before[1])
    for r, (want_i, want_s) in enumerate(expected):
        if r not in rows:
            assert (out[0][r], out[1][r]) == (starts[r], ends[r])
        np.testing.assert_array_equal(pool_i[out[0][r]:out[1][r]], want_i)
        np.testing.assert_array_equal(pool_s[out[0][r]:out[1][r]], want_s)


@pytest.mark.parametrize("similarity", sorted(SIMILARITIES))
def test_pruning_some_rows_equals_those_rows_of_a_full_prune(similarity):
    method = SIMILARITIES[similarity]
    rng = np.random.default_rng(method)
    indptr, indices, data = random_csr(rng, 30, 30, 12)
    data = np.round(data * 4.0).astype(np.float64) + 1.0  # few distinct counts: many ties
    rank = rng.permutation(30).astype(np.int32)
    starts, ends = indptr[:-1], indptr[1:]
    _, col_sum, total = kb.row_col_sums(starts, ends, indices, data, 30)
    everything = kb.prune_rows(starts, ends, indices, data, np.arange(30, dtype=np.int64), col_sum,
                               total, rank, method, 3, np.full(30, -np.inf))
    rows = np.array([0, 4, 5, 17, 29], dtype=np.int64)
    some = kb.prune_rows(starts, ends, indices, data, rows, col_sum, total, rank, method, 3,
                         np.full(30, -np.inf))
    for k, r in enumerate(rows):
        for part in (1, 2):
            np.testing.assert_array_equal(some[part][some[0][k]: some[0][k + 1]],
                                          everything[part][everything[0][r]: everything[0][r + 1]])


@settings(max_examples=60, deadline=None)
@given(log=batches, config=st.sampled_from(CONFIGS + [ModelConfig(window=3, similarity="raw", top_n=2)]))
def test_cutoffs_left_by_earlier_prunes_change_no_prune(log, config):
    # Each prune leaves per-row cutoffs that later prunes start from; pruning with none
    # (as a model loaded from disk does) must give the same rows, counts having grown.
    model, t = CoVisitModel(config), 0.0
    for version, batch in enumerate(log, start=1):
        events, t = to_events(batch, t)
        if events:
            model.update(events)
        with_cutoffs = ref.serving_arrays(model.snapshot(version))
        model._cutoffs[:] = -np.inf
        without = ref.serving_arrays(model.snapshot(version))
        for name in ("indptr", "indices", "scores"):
            np.testing.assert_array_equal(with_cutoffs[name], without[name], err_msg=name)
        model.snapshot(version)  # leave cutoffs for the next round, as serving does

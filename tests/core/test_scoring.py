"""The request kernel and its glue: top-k over summed CSR rows, exclusions, popularity fill."""

import numpy as np
import pytest

from covisit.core import kernels_topk as kt
from covisit.core.config import ModelConfig
from covisit.core.events import Event
from covisit.core.model import CoVisitModel
from covisit.core.scoring import new_scratch, recommend, similar_items

from . import reference as ref


def random_csr(rng, n_items, max_row):
    lengths = rng.integers(0, max_row + 1, size=n_items)
    indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    indices = np.concatenate([rng.choice(n_items, size=n, replace=False) for n in lengths]).astype(np.int32)
    # few distinct values, so ties are common and the tie-break is exercised
    scores = rng.choice(np.array([0.5, 1.0, 2.0, 3.0], dtype=np.float32), size=len(indices))
    return indptr, indices, scores


@pytest.mark.parametrize("seed", range(12))
def test_recommend_kernel_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = 40
    indptr, indices, scores = random_csr(rng, n, 12)
    fill_order = rng.permutation(n).astype(np.int32)
    rank = np.empty(n, dtype=np.int32)
    rank[fill_order] = np.arange(n, dtype=np.int32)
    ctx = rng.integers(0, n, size=rng.integers(0, 6)).astype(np.int32)
    exclude = np.unique(np.r_[ctx, rng.integers(0, n, size=3)]).astype(np.int32)
    allowed = np.unique(rng.integers(0, n, size=25)).astype(np.int32) if seed % 2 else None
    k = int(rng.integers(1, 30))
    # the kernel reads rows by their bounds, wherever they are: here last row first in the pool
    order = np.arange(n)[::-1]
    lengths = np.diff(indptr)[order]
    starts = np.empty(n, np.int64)
    starts[order] = np.r_[0, np.cumsum(lengths)[:-1]]
    ends = starts + np.diff(indptr)
    pool_i = np.concatenate([indices[indptr[r]:indptr[r + 1]] for r in order])
    pool_s = np.concatenate([scores[indptr[r]:indptr[r + 1]] for r in order])
    size = kt.table_size(starts, ends, ctx, len(exclude))
    keys, vals, slots = new_scratch(size)
    out_i, out_s, out_src = np.empty(k, np.int32), np.empty(k, np.float32), np.empty(k, np.int8)
    got_n = kt.recommend_into(starts, ends, pool_i, pool_s, rank, fill_order, ctx, 0.5, exclude,
                              np.empty(0, np.int32) if allowed is None else allowed, allowed is not None,
                              keys, vals, slots, out_i, out_s, out_src)
    got = [(int(i), float(s), int(src)) for i, s, src in zip(out_i[:got_n], out_s[:got_n], out_src[:got_n])]
    want = ref.recommend(indptr, indices, scores, rank, fill_order, list(ctx), 0.5, set(exclude.tolist()),
                         None if allowed is None else set(allowed.tolist()), k)
    assert got == want


@pytest.mark.parametrize("seed", range(5))
def test_heap_keeps_the_k_best_in_order(seed):
    rng = np.random.default_rng(seed)
    n, k = 200, 17
    s = rng.choice(np.array([1.0, 2.0, 3.0], dtype=np.float32), size=n)
    rank = rng.permutation(n).astype(np.int32)
    heap_s, heap_i = np.empty(k, np.float32), np.empty(k, np.int32)
    size = 0
    for i in range(n):
        size = kt.heap_push(heap_s, heap_i, size, s[i], i, rank)
    kt.heap_sort_best_first(heap_s, heap_i, size, rank)
    want = sorted(range(n), key=lambda i: (-s[i], rank[i]))[:k]
    assert heap_i.tolist() == want


@pytest.fixture(scope="module")
def shop():
    # Two visitors buy a -> b -> c, one views a -> d; item e is only popular.
    model = CoVisitModel(ModelConfig(window=2, backward=0.0, distance="inverse", similarity="raw", recency=0.5))
    events = []
    for u in ("u1", "u2"):
        events += [Event(u, "a", "view", 1), Event(u, "b", "view", 2), Event(u, "c", "purchase", 3)]
    events += [Event("u3", "a", "view", 1), Event("u3", "d", "view", 2)]
    events += [Event(f"p{i}", "e", "view", 5) for i in range(9)]
    model.update(events)
    return model.snapshot()


def test_recommend_by_hand(shop):
    # a -> b: 2 x 1, a -> c: 2 x 4/2, a -> d: 1; ties go to the more popular item (b: 2 events, c: 8 weight)
    got = recommend(shop, ["a"], k=4)
    assert [(r.item_id, r.score, r.source) for r in got] == [
        ("c", 4.0, kt.SOURCE_COOCCURRENCE), ("b", 2.0, kt.SOURCE_COOCCURRENCE),
        ("d", 1.0, kt.SOURCE_COOCCURRENCE), ("e", 0.0, kt.SOURCE_POPULARITY)]


def test_context_rows_are_summed_with_recency_weights(shop):
    # newest b weighs 1: b -> c 8; older a weighs 0.5: c 4*0.5=2, b excluded (context), d 0.5
    got = recommend(shop, ["a", "b"], k=2)
    assert [(r.item_id, r.score) for r in got] == [("c", 10.0), ("d", 0.5)]


def test_exclude_allowed_and_unknown_items(shop):
    assert [r.item_id for r in recommend(shop, ["a"], k=2, exclude=["c", "zzz"])] == ["b", "d"]
    assert [r.item_id for r in recommend(shop, ["a"], k=3, allowed=["d", "e", "zzz"])] == ["d", "e"]
    assert [r.item_id for r in recommend(shop, ["a"], k=2, exclude_context=False, allowed=["a", "b"])] == ["b", "a"]
    only_pop = recommend(shop, ["unknown"], k=2)
    assert [(r.item_id, r.source) for r in only_pop] == [("e", kt.SOURCE_POPULARITY), ("c", kt.SOURCE_POPULARITY)]


def test_similar_items_excludes_the_item(shop):
    assert [r.item_id for r in similar_items(shop, "b", k=2)] == ["c", "e"]


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_k_out_of_range_names_k(shop, k):
    with pytest.raises(ValueError, match="k must be"):
        recommend(shop, ["a"], k=k)

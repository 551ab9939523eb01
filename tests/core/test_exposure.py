"""Exposure measures (Gini, entropy, source shares) by hand, and the sliding window of responses."""

import math
import random
import threading

import pytest

from covisit.core import kernels_topk as kt
from covisit.core.exposure import (SOURCE_NAMES, ExposureStats, ExposureWindow, entropy_bits, gini, histogram,
                                   source_shares)

C, T, P, E = kt.SOURCE_COOCCURRENCE, kt.SOURCE_CONTENT, kt.SOURCE_POPULARITY, kt.SOURCE_EXPLORATION


def test_source_names_follow_the_kernel_ints():
    assert [SOURCE_NAMES[s] for s in (C, T, P, E)] == ["COOCCURRENCE", "CONTENT", "POPULARITY", "EXPLORATION"]


@pytest.mark.parametrize("counts, n, expected", [
    ([4], 4, 0.75),  # [4,0,0,0]: 6 ordered pairs differ by 4: 24 / (2 * 16 * 1)
    ([1, 1, 1, 1], 4, 0.0),  # all equal
    ([5, 5], 2, 0.0),
    ([1, 2, 3], 3, 8 / 36),  # sum |xi - xj| = 2 (1 + 2 + 1) = 8; 2 n^2 mean = 2 * 9 * 2 = 36
    ([1, 3], 4, 0.625),  # [0,0,1,3]: sum = 2 (0+1+3+1+3+2) = 20; 2 * 16 * 1 = 32
    ([2, 2], 4, 0.5),  # [0,0,2,2]: 2 * (4 pairs * 2) = 16; 32
    ([7], 1, 0.0),  # one item: nothing to be unequal to
    ([], 5, 0.0),  # no slots
    ([4], 0, 0.0),  # n below the items shown counts as their number
    ([1, 3], 1, 0.25),  # [1,3] over 2: 2 * 2 = 4; 2 * 4 * 2 = 16
])
def test_gini_by_hand(counts, n, expected):
    assert gini(counts, n) == pytest.approx(expected)


def test_entropy_by_hand():
    assert entropy_bits([1, 1, 1, 1]) == pytest.approx(2.0)
    assert entropy_bits([2, 1, 1]) == pytest.approx(1.5)  # 0.5*1 + 2 * 0.25*2
    assert entropy_bits([3, 1]) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert entropy_bits([9]) == 0.0 and entropy_bits([]) == 0.0 and entropy_bits([0, 4, 0]) == 0.0


def test_source_shares_name_all_four():
    assert source_shares([3, 0, 1, 0]) == {"COOCCURRENCE": 0.75, "CONTENT": 0.0, "POPULARITY": 0.25,
                                           "EXPLORATION": 0.0}
    assert source_shares([0, 0, 0, 0]) == dict.fromkeys(SOURCE_NAMES, 0.0)


def test_window_stats_by_hand():
    w = ExposureWindow(size=10)
    assert w.stats(5) == ExposureStats(0, 0, 0, 0.0, 0.0, 0.0, dict.fromkeys(SOURCE_NAMES, 0.0))
    w.add(["a", "b"], [C, C])
    w.add(["a", "c"], [C, P])
    w.add(["a"], [E])
    s = w.stats(catalog_size=10)  # exposures a=3, b=1, c=1 and seven zeros
    assert (s.responses, s.slots, s.distinct_items, s.coverage) == (3, 5, 3, 0.3)
    # sorted [0]*7 + [1, 1, 3]: 2 * (8 + 9 + 30) / (10 * 5) - 11 / 10 = 0.78
    assert s.gini == pytest.approx(0.78)
    assert s.entropy_bits == pytest.approx(-(0.6 * math.log2(0.6) + 2 * 0.2 * math.log2(0.2)))
    assert s.source_shares == {"COOCCURRENCE": 0.6, "CONTENT": 0.0, "POPULARITY": 0.2, "EXPLORATION": 0.2}


def test_a_catalog_smaller_than_the_items_shown_counts_as_their_number():
    w = ExposureWindow()
    w.add(["a", "b", "c"], [C, C, C])
    for catalog_size in (0, 2):
        s = w.stats(catalog_size)
        assert s.coverage == 1.0 and s.gini == 0.0


def test_the_oldest_response_leaves_the_window():
    w = ExposureWindow(size=2)
    w.add(["a", "b"], [C, T])
    w.add(["b"], [P])
    w.add(["c"], [E])  # ["a", "b"] leaves: a is gone, b once
    s = w.stats(4)
    assert (s.responses, s.slots, s.distinct_items) == (2, 2, 2)
    assert s.source_shares == {"COOCCURRENCE": 0.0, "CONTENT": 0.0, "POPULARITY": 0.5, "EXPLORATION": 0.5}
    assert w._item_counts == {"b": 1, "c": 1}  # the bound itself: items that left are forgotten


def test_bad_input_is_refused_before_anything_counts():
    w = ExposureWindow()
    with pytest.raises(ValueError, match="2 item ids but 1 sources"):
        w.add(["a", "b"], [C])
    with pytest.raises(ValueError, match="unknown recommendation source 7"):
        w.add(["a", "b"], [C, 7])
    assert w.stats(3).responses == 0 and w.stats(3).slots == 0
    with pytest.raises(ValueError):
        ExposureWindow(size=0)


def test_totals_stay_consistent_under_concurrency():
    w = ExposureWindow(size=1000)

    def work(t):
        for r in range(300):
            w.add([f"i{t}", f"i{r % 7}"], [t % 4, C])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    s = w.stats(100)
    assert (s.responses, s.slots) == (1000, 2000)
    assert sum(w._item_counts.values()) == 2000 and all(c > 0 for c in w._item_counts.values())
    assert sum(s.source_shares.values()) == pytest.approx(1.0) and s.source_shares["COOCCURRENCE"] >= 0.5


@pytest.mark.parametrize("seed", range(4))
def test_the_kept_histogram_gives_the_pairwise_definition(seed):
    rng = random.Random(seed)
    w = ExposureWindow(size=rng.randint(1, 40))
    for _ in range(120):
        items = rng.sample([f"i{k}" for k in range(30)], rng.randint(1, 6))
        w.add(items, [rng.randrange(4) for _ in items])
        assert w._hist == histogram(w._item_counts.values())
    n = 50
    x = list(w._item_counts.values()) + [0] * (n - len(w._item_counts))
    pairwise = sum(abs(a - b) for a in x for b in x) / (2 * n * n * (sum(x) / n))
    assert w.stats(n).gini == pytest.approx(pairwise)

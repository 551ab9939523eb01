"""CTR drift against the trailing baseline (injected clock), Jensen-Shannon by hand, and item
drift on the bundled online-retail log: quiet when shuffled, firing on an injected shift."""

import math
import random
import threading
from collections import Counter
from pathlib import Path

import pytest

from covisit.core.datasets import read_online_retail
from covisit.core.drift import DEFAULT_ITEM_DRIFT_THRESHOLD, CtrDrift, ItemDrift

DATA = Path(__file__).resolve().parents[2] / "loadtest" / "data" / "online_retail.csv.gz"
WEEK_MINUTES = 7 * 24 * 60


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def minutes(drift: CtrDrift, clock: Clock, n: int, impressions: int, clicks: int) -> None:
    """One record a minute for `n` minutes; the clock stays in the last one."""
    for _ in range(n):
        drift.record(impressions, clicks)
        clock.now += 60
    clock.now -= 60


def week_at_ten_percent() -> tuple[CtrDrift, Clock]:
    clock = Clock()
    drift = CtrDrift(clock=clock)  # 1 h window in 1 min buckets, 7 d baseline, 20% drop
    minutes(drift, clock, WEEK_MINUTES, 100, 10)
    clock.now += 60
    return drift, clock


def test_a_halved_ctr_fires_with_both_figures():
    drift, clock = week_at_ten_percent()
    minutes(drift, clock, 60, 100, 5)
    assert drift.figures() == (pytest.approx(0.05), pytest.approx(0.10), 6000, 100 * WEEK_MINUTES)
    reason = drift.check()
    assert reason is not None and "0.0500" in reason and "0.1000" in reason and "50.0% lower" in reason


def test_a_ten_percent_dip_stays_quiet():
    drift, clock = week_at_ten_percent()
    minutes(drift, clock, 60, 100, 9)
    assert drift.figures()[:2] == (pytest.approx(0.09), pytest.approx(0.10))
    assert drift.check() is None


def test_too_few_impressions_stay_quiet():
    drift, clock = week_at_ten_percent()
    minutes(drift, clock, 60, 10, 0)  # CTR 0, but 600 impressions < 1000
    assert drift.figures()[2] == 600 and drift.check() is None
    clock = Clock()
    drift = CtrDrift(clock=clock)
    minutes(drift, clock, 5, 5, 1)  # 25 impressions of baseline only
    clock.now += 3600
    minutes(drift, clock, 60, 100, 0)
    assert drift.figures()[3] == 25 and drift.check() is None


def test_buckets_move_from_recent_to_baseline_and_out():
    clock = Clock()
    drift = CtrDrift(window_seconds=60, baseline_seconds=120, bucket_seconds=60, min_impressions=1,
                     clock=clock, min_z=0)  # the bucket mechanics, on too few impressions to be sure
    drift.record(10, 1)
    assert drift.figures() == (0.1, 0.0, 10, 0) and drift.check() is None  # no baseline yet
    clock.now = 60
    drift.record(10, 0)
    assert drift.figures() == (0.0, 0.1, 10, 10)
    assert "CTR 0.0000 over the last 1 min" in drift.check()
    clock.now = 180  # the first minute left the baseline, the second moved into it
    assert drift.figures() == (0.0, 0.0, 0, 10)
    clock.now = 240
    assert drift.figures() == (0.0, 0.0, 0, 0) and not drift._recent and not drift._baseline


def test_ctr_drift_refuses_bad_settings():
    for kwargs in ({"drop": 0}, {"drop": 1}, {"min_impressions": 0}, {"bucket_seconds": 0},
                   {"bucket_seconds": 7200}):
        with pytest.raises(ValueError):
            CtrDrift(**kwargs)
    with pytest.raises(ValueError):
        CtrDrift().record(-1)


def test_ctr_drift_counts_every_record_under_concurrency():
    drift = CtrDrift(clock=lambda: 0.0)

    def work():
        for _ in range(1000):
            drift.record(2, 1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert drift.figures() == (0.5, 0.0, 16_000, 0)


def js_divergence(p: dict[str, int], q: dict[str, int]) -> float:
    """The definition, item by item: (KL(P || M) + KL(Q || M)) / 2 with M = (P + Q) / 2."""
    p_total, q_total = sum(p.values()), sum(q.values())
    total = 0.0
    for item in set(p) | set(q):
        pi, qi = p.get(item, 0) / p_total, q.get(item, 0) / q_total
        mi = (pi + qi) / 2
        total += (pi * math.log2(pi / mi) if pi else 0.0) + (qi * math.log2(qi / mi) if qi else 0.0)
    return total / 2


def test_the_reference_divergence_by_hand():
    assert js_divergence({"a": 1, "b": 2}, {"b": 4, "a": 2}) == pytest.approx(0.0)
    assert js_divergence({"a": 3}, {"b": 1, "c": 1}) == pytest.approx(1.0)
    # P = (1/2, 1/2), Q = (1, 0), M = (3/4, 1/4): KL(P||M) = 1/2 log2(2/3) + 1/2 log2(2) = 0.2075,
    # KL(Q||M) = log2(4/3) = 0.4150; JS = their mean
    assert js_divergence({"a": 1, "b": 1}, {"a": 5}) == pytest.approx(0.311278, abs=1e-6)
    assert js_divergence({"a": 5}, {"a": 1, "b": 1}) == pytest.approx(0.311278, abs=1e-6)


def test_item_drift_windows_by_hand():
    drift = ItemDrift(window=2, baseline=2, threshold=0.5)
    drift.record(["a", "a", "b"])
    assert drift.divergence() is None and drift.check() is None  # the baseline is not full yet
    drift.record(["b"])  # baseline [a, a], window [b, b]
    assert drift.divergence() == pytest.approx(1.0)
    assert drift.check() == ("item distribution of the newest 2 events diverges from the 2 before them: "
                             "Jensen-Shannon 1.000 > 0.5")
    drift.record(["a", "b", "a", "b"])  # baseline [a, b], window [a, b]
    assert drift.divergence() == pytest.approx(0.0) and drift.check() is None
    assert drift._counts == {"a": (1, 1), "b": (1, 1)}


@pytest.mark.parametrize("seed", range(5))
def test_the_kept_sums_give_the_definition_after_every_event(seed):
    rng = random.Random(seed)
    window, baseline = rng.randint(1, 30), rng.randint(1, 60)
    drift = ItemDrift(window=window, baseline=baseline)
    items = [f"i{min(int(rng.expovariate(0.3)), 40)}" for _ in range(3 * (window + baseline))]
    for n, item in enumerate(items, 1):
        drift.record([item])
        if n < window + baseline:
            assert drift.divergence() is None
            continue
        recent, older = items[n - window:n], items[n - window - baseline:n - window]
        assert drift.divergence() == pytest.approx(js_divergence(Counter(recent), Counter(older)), abs=1e-9)


def test_item_drift_holds_only_its_windows_under_concurrency():
    drift = ItemDrift(window=100, baseline=300, threshold=0.5)

    def work(t):
        for r in range(200):
            drift.record([f"i{(t * r) % 13}", f"i{r % 5}"])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(p for p, _ in drift._counts.values()) == len(drift._recent) == 100
    assert sum(q for _, q in drift._counts.values()) == len(drift._older) == 300
    assert Counter(drift._older) == {item: q for item, (_, q) in drift._counts.items() if q}
    expected = js_divergence(Counter(drift._recent), Counter(drift._older))
    assert drift.divergence() == pytest.approx(expected, abs=1e-9)


@pytest.fixture(scope="module")
def shuffled_items() -> list[str]:
    """The bundled log's item ids in a fixed random order: stationary traffic."""
    items = [e.item_id for e in read_online_retail(DATA).events]
    random.Random(0).shuffle(items)
    return items


def replay(drift: ItemDrift, items: list[str]) -> list[float]:
    """Feed `items` in batches of 1000; the divergence after each (once there is one)."""
    values = []
    for start in range(0, len(items), 1000):
        drift.record(items[start:start + 1000])
        if drift.divergence() is not None:
            values.append(drift.divergence())
    return values


def test_item_drift_is_quiet_on_stationary_traffic(shuffled_items):
    drift = ItemDrift()
    values = replay(drift, shuffled_items[:200_000])
    assert len(values) == 141  # every 1000 events from 60 000 on
    assert max(values) < DEFAULT_ITEM_DRIFT_THRESHOLD / 2  # the clear margin (measured max 0.089)
    assert drift.check() is None


@pytest.mark.parametrize("shift", ["half unseen", "re-ranked"])
def test_item_drift_fires_on_a_shift(shuffled_items, shift):
    rng = random.Random(1)
    if shift == "half unseen":  # half the events on items never seen before
        def move(item):
            return "new-" + item if rng.random() < 0.5 else item
    else:  # the same popularity curve over other items
        ranking = [item for item, _ in Counter(shuffled_items).most_common()]
        shuffled = ranking[:]
        rng.shuffle(shuffled)
        move = dict(zip(ranking, shuffled)).__getitem__
    drift = ItemDrift()
    before = replay(drift, shuffled_items[:60_000])
    after = replay(drift, [move(item) for item in shuffled_items[60_000:70_000]])
    assert max(before) < DEFAULT_ITEM_DRIFT_THRESHOLD / 2 and after[-1] > 1.5 * DEFAULT_ITEM_DRIFT_THRESHOLD
    assert f"Jensen-Shannon {after[-1]:.3f} > 0.2" in drift.check()


def test_a_drop_within_the_usual_hourly_spread_stays_quiet():
    clock = Clock()
    drift = CtrDrift(clock=clock)
    # a week whose hourly CTR swings between 9% and 11% (mean 10%, standard deviation 1%) ...
    for hour in range(7 * 24):
        minutes(drift, clock, 60, 100, 9 if hour % 2 else 11)
        clock.now += 60
    # ... then an hour at 7.5%: 25% below the mean (thousands of impressions: 8 binomial
    # errors), yet only 2.5 of the usual hourly deviations
    minutes(drift, clock, 60, 100, 7)
    drift.record(100, 30)
    recent, baseline, _, _ = drift.figures()
    assert recent < 0.8 * baseline and drift.check() is None
    minutes(drift, clock, 1, 0, 0)
    clock.now += 3600  # the next hour: no clicks at all, 10 deviations
    minutes(drift, clock, 60, 100, 0)
    assert "standard deviations" in drift.check()

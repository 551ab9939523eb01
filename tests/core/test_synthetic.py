"""The synthetic Zipf log the benchmarks build from."""

import numpy as np

from covisit.core.synthetic import zipf_log


def test_zipf_log_shape_order_and_skew():
    log = zipf_log(20_000, 1_000, seed=3)
    assert len(log.items) == len(log.seqs) == len(log.weights) == len(log.times) == 20_000
    assert np.all(np.diff(log.times) >= 0)  # time order, sessions interleaved
    assert log.items.min() >= 0 and log.items.max() < 1_000
    assert set(np.unique(log.weights)) <= {1.0, 2.0, 3.0, 4.0}
    counts = np.bincount(log.items, minlength=1_000)
    assert counts[:10].sum() > counts[-500:].sum()  # the head outweighs half the tail
    mean_session = 20_000 / len(np.unique(log.seqs))
    assert 7 < mean_session < 13


def test_zipf_log_is_seeded():
    a, b, c = zipf_log(1_000, 100, seed=1), zipf_log(1_000, 100, seed=1), zipf_log(1_000, 100, seed=2)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.times, b.times)
    assert not np.array_equal(a.items, c.items)

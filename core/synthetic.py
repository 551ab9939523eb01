"""A seeded synthetic event log with Zipf item popularity, for measuring speed at scale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SyntheticLog:
    """Encoded events in time order (the model's `update_encoded` input)."""
    seqs: np.ndarray  # int32 session id
    items: np.ndarray  # int32 item id, Zipf-distributed
    weights: np.ndarray  # float64 event weight (1..4)
    times: np.ndarray  # float64 unix seconds
    n_items: int


def zipf_log(n_events: int, n_items: int, seed: int = 0, exponent: float = 1.0,
             mean_session: float = 10.0, span_seconds: float = 30 * 86400.0,
             locality: float = 0.5) -> SyntheticLog:
    """Sessions of geometric length, interleaved in time like a real log.

    With probability `locality` an event's item is a near neighbour (in id) of the session's
    previous item, so co-visitation has structure to find, as in real catalogues.
    """
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, n_items + 1) ** exponent)
    popular = np.searchsorted(cdf, rng.random(n_events) * cdf[-1]).astype(np.int32)
    lengths = rng.geometric(1.0 / mean_session, size=int(n_events / mean_session * 1.2) + 1)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_events) + 1]
    lengths[-1] -= lengths.sum() - n_events
    seqs = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    first = np.r_[True, seqs[1:] != seqs[:-1]]
    near = ~first & (rng.random(n_events) < locality)
    items = popular.copy()
    step = rng.integers(-3, 4, size=n_events)
    for _ in range(2):  # neighbours of the previous item (two passes make short chains)
        prev = np.r_[0, items[:-1]]
        items = np.where(near, np.clip(prev + step, 0, n_items - 1), items).astype(np.int32)
    starts = rng.random(len(lengths)) * span_seconds
    offsets = rng.exponential(60.0, size=n_events)
    times = np.repeat(starts, lengths) + _cumsum_within(offsets, lengths)
    order = np.argsort(times, kind="stable")
    weights = rng.choice(np.array([1.0, 2.0, 3.0, 4.0]), p=[0.7, 0.2, 0.07, 0.03], size=n_events)
    return SyntheticLog(seqs[order], items[order], weights[order], times[order], n_items)


def _cumsum_within(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Cumulative sums that restart at each group of `lengths` entries."""
    total = np.cumsum(values)
    group_start = np.repeat(np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    return total - np.r_[0.0, total][group_start]

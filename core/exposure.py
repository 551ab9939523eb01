"""What the served lists expose: how much of the catalog they show, how evenly, and from which
sources, over the newest responses.

An exposure is one item in one response (one slot). The measures are module functions as well,
so the offline report (report.py) computes them exactly as the live window does:

- Gini coefficient of the exposure counts x_1..x_n over the n catalog items (items never shown
  count as 0): G = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x)). 0 when every item is shown
  equally often, (n - 1) / n when one item takes every slot, 0 when nothing was shown.
- Shannon entropy in bits of the exposure distribution over the items shown: -sum p log2 p with
  p = x_i / slots; log2(k) when k items are shown equally often.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Collection, Sequence
from typing import NamedTuple

import numpy as np

# Indexed by the SOURCE_* ints of covisit.core.kernels_topk (0..3); the names are the proto's.
SOURCE_NAMES: tuple[str, ...] = ("COOCCURRENCE", "CONTENT", "POPULARITY", "EXPLORATION")


def source_name(source: int) -> str:
    """The name of a source int (a ValueError for anything else: a caller's bug, not data)."""
    if not 0 <= source < len(SOURCE_NAMES):
        raise ValueError(f"unknown recommendation source {source!r}")
    return SOURCE_NAMES[source]


def gini(counts: Collection[int], n: int) -> float:
    """Gini coefficient of the exposure counts of the items shown, padded with zeros to `n` items.

    `n` below len(counts) is taken as len(counts): there cannot be fewer items than were shown.
    Uses the sorted form of the formula in the module docstring: with x ascending and i 1-based,
    G = 2 sum_i i x_i / (n sum x) - (n + 1) / n, where the n - len(counts) zeros come first."""
    x = np.sort(np.fromiter(counts, dtype=np.float64, count=len(counts)))
    total = float(x.sum())
    if total == 0:
        return 0.0
    n = max(n, len(x))
    ranks = np.arange(n - len(x) + 1, n + 1, dtype=np.float64)  # the zeros hold ranks 1..n-len(x)
    # max: equal counts can round to -1e-17
    return max(0.0, 2.0 * float(ranks @ x) / (n * total) - (n + 1) / n)


def entropy_bits(counts: Collection[int]) -> float:
    """Shannon entropy in bits of the distribution proportional to `counts` (zeros ignored)."""
    x = np.fromiter(counts, dtype=np.float64, count=len(counts))
    x = x[x > 0]
    total = float(x.sum())
    if total == 0:
        return 0.0
    p = x / total
    return max(0.0, float(-(p * np.log2(p)).sum()))


def source_shares(slots_by_source: Sequence[int]) -> dict[str, float]:
    """Source name -> share of the slots (`slots_by_source[s]` slots came from source s)."""
    total = sum(slots_by_source)
    return {name: (slots_by_source[s] / total if total else 0.0) for s, name in enumerate(SOURCE_NAMES)}


class ExposureStats(NamedTuple):
    responses: int  # responses in the window
    slots: int  # items shown in them (sum of list lengths)
    distinct_items: int
    coverage: float  # distinct_items / max(catalog_size, distinct_items); 0 when both are 0
    gini: float  # over catalog_size items, see the module docstring; 0 when no slots
    entropy_bits: float  # of the exposure distribution over the items shown
    source_shares: dict[str, float]  # source name -> share of slots, all four names present


def exposure_stats(responses: int, item_counts: Collection[int], slots_by_source: Sequence[int],
                   catalog_size: int) -> ExposureStats:
    """The stats of `responses` responses whose items were shown `item_counts` times each."""
    distinct = len(item_counts)
    n = max(catalog_size, distinct)  # a stale or small catalog size never gives coverage > 1
    return ExposureStats(responses=responses, slots=sum(slots_by_source), distinct_items=distinct,
                         coverage=distinct / n if n else 0.0, gini=gini(item_counts, n),
                         entropy_bits=entropy_bits(item_counts),
                         source_shares=source_shares(slots_by_source))


class ExposureWindow:
    """Exposure over the newest `size` responses.

    Thread-safe: `add` holds one lock for O(len(items)) dict updates (request threads call it on
    every response); `stats` copies the counts under the lock and does the sorting outside it."""

    def __init__(self, size: int = 10_000):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._responses: deque[tuple[tuple[str, ...], tuple[int, ...]]] = deque()
        self._item_counts: dict[str, int] = {}  # only items in the window: memory stays bounded
        self._slots_by_source = [0] * len(SOURCE_NAMES)
        self._lock = threading.Lock()

    def add(self, item_ids: Sequence[str], sources: Sequence[int]) -> None:
        """One response: its items in order and the source int of each."""
        if len(item_ids) != len(sources):
            raise ValueError(f"{len(item_ids)} item ids but {len(sources)} sources")
        sources = tuple(int(s) for s in sources)
        for s in sources:
            source_name(s)  # refuses an unknown source before anything is counted
        response = (tuple(item_ids), sources)
        with self._lock:
            self._count(response, 1)
            self._responses.append(response)
            if len(self._responses) > self.size:
                self._count(self._responses.popleft(), -1)

    def stats(self, catalog_size: int) -> ExposureStats:
        with self._lock:
            responses = len(self._responses)
            counts = list(self._item_counts.values())
            slots_by_source = list(self._slots_by_source)
        return exposure_stats(responses, counts, slots_by_source, catalog_size)

    def _count(self, response: tuple[tuple[str, ...], tuple[int, ...]], step: int) -> None:
        item_ids, sources = response
        counts = self._item_counts
        for item in item_ids:
            c = counts.get(item, 0) + step
            if c:
                counts[item] = c
            else:
                del counts[item]
        for s in sources:
            self._slots_by_source[s] += step
